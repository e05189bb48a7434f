"""File integrity before anything native reads a file: cheap header checks, and hashes verified once.

Contract:
- `check_gguf(path)` parses a GGUF file's header (magic, version, key/value pairs, tensor table) and checks that
  every tensor's data lies inside the file; `check_onnx(path)` checks that a file starts like a serialized ONNX
  ModelProto. Both raise a one-line `BundleError` for a truncated, empty or foreign file, so garbage never reaches
  llama.cpp or ONNX Runtime. Neither reads tensor data: milliseconds on a multi-GB file.
- `verified_sha256(path, expected)` returns the file's sha256 after checking it equals `expected` (the manifest's),
  hashing the file only the first time: the result is remembered under the cache dir, keyed by the file's path and
  identity (device, inode, size, mtime_ns, ctime_ns), so any rewrite, copy or replacement is hashed again. A
  mismatch is a one-line `BundleError`. `llava-local info --verify` still re-hashes everything.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path

from .errors import BundleError
from .manifest import sha256_file
from .paths import cache_dir

GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = (2, 3)
# Sanity bounds for header counts: real models have a few hundred keys and a few thousand tensors.
_MAX_KV, _MAX_TENSORS, _MAX_DIMS = 1 << 20, 1 << 22, 8
# GGUF value types → fixed byte size (8 = string, 9 = array are variable).
_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
# ggml tensor types → (bytes per block, elements per block); types missing here are not size-checked.
_GGML = {0: (4, 1), 1: (2, 1), 2: (18, 32), 3: (20, 32), 6: (22, 32), 7: (24, 32), 8: (34, 32), 9: (36, 32),
         10: (84, 256), 11: (110, 256), 12: (144, 256), 13: (176, 256), 14: (210, 256), 15: (292, 256),
         24: (1, 1), 25: (2, 1), 26: (4, 1), 27: (8, 1), 28: (8, 1), 30: (2, 1)}


class _Reader:
    """Bounds-checked little-endian reads from a file (never reads past its end, never allocates huge buffers)."""

    def __init__(self, f, size: int, name: str) -> None:
        self.f, self.size, self.name = f, size, name

    def bytes(self, n: int) -> bytes:
        if n < 0 or self.f.tell() + n > self.size:
            raise BundleError(f"{self.name}: not a valid GGUF file (truncated header); copy it again or re-convert")
        return self.f.read(n)

    def unpack(self, fmt: str) -> int:
        return struct.unpack("<" + fmt, self.bytes(struct.calcsize(fmt)))[0]

    def string(self) -> bytes:
        return self.bytes(self.unpack("Q"))

    def value(self, vtype: int, depth: int = 0) -> object:
        if vtype in _SCALAR:
            return self.bytes(_SCALAR[vtype])
        if vtype == 8:
            return self.string()
        if vtype == 9 and depth == 0:
            itype, n = self.unpack("I"), self.unpack("Q")
            if itype in _SCALAR:  # skip a numeric array in one seek (after checking it fits)
                self.f.seek(self.f.tell() + self._fits(n * _SCALAR[itype]))
                return None
            for _ in range(n):
                self.value(itype, depth + 1)
            return None
        raise BundleError(f"{self.name}: not a valid GGUF file (unknown value type {vtype})")

    def _fits(self, n: int) -> int:
        if self.f.tell() + n > self.size:
            raise BundleError(f"{self.name}: not a valid GGUF file (truncated header); copy it again or re-convert")
        return n


def check_gguf(path: str | Path) -> None:
    """Raise BundleError unless `path` is a structurally sound GGUF file (header and tensor extents)."""
    path = Path(path)
    name = path.name
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            r = _Reader(f, size, name)
            if size < 24 or r.bytes(4) != GGUF_MAGIC:
                raise BundleError(f"{name}: not a GGUF file (wrong magic or too short)")
            version = r.unpack("I")
            if version not in GGUF_VERSIONS:
                raise BundleError(f"{name}: GGUF version {version} is not supported (expected 2 or 3)")
            n_tensors, n_kv = r.unpack("Q"), r.unpack("Q")
            if n_tensors > _MAX_TENSORS or n_kv > _MAX_KV:
                raise BundleError(f"{name}: not a valid GGUF file (header claims {n_tensors} tensors, {n_kv} keys)")
            alignment = 32
            for _ in range(n_kv):
                key, vtype = r.string(), r.unpack("I")
                raw = r.value(vtype)
                if key == b"general.alignment" and vtype == 4 and isinstance(raw, bytes):
                    alignment = struct.unpack("<I", raw)[0]
            if alignment == 0 or alignment & (alignment - 1):
                raise BundleError(f"{name}: not a valid GGUF file (alignment {alignment})")
            end = 0
            for _ in range(n_tensors):
                r.string()
                n_dims = r.unpack("I")
                if not 1 <= n_dims <= _MAX_DIMS:
                    raise BundleError(f"{name}: not a valid GGUF file (a tensor with {n_dims} dimensions)")
                n_elem = 1
                for _ in range(n_dims):
                    n_elem *= r.unpack("Q")
                ttype, offset = r.unpack("I"), r.unpack("Q")
                if ttype in _GGML:
                    block_bytes, block = _GGML[ttype]
                    end = max(end, offset + -(-n_elem // block) * block_bytes)
                else:
                    end = max(end, offset)
            data_start = -(-f.tell() // alignment) * alignment
    except OSError as e:
        raise BundleError(f"cannot read {path}: {e.strerror}") from None
    if data_start + end > size:
        raise BundleError(f"{name}: truncated GGUF file ({size} bytes, its tensors need {data_start + end}); "
                          "copy it again or re-convert")


def check_onnx(path: str | Path) -> None:
    """Raise BundleError unless `path` starts like a serialized ONNX model (field 1, ir_version, a small varint)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise BundleError(f"cannot read {path}: {e.strerror}") from None
    # protobuf writes fields in number order and ModelProto's field 1 is ir_version (varint): tag 0x08, then 1..127.
    if len(head) < 16 or head[0] != 0x08 or not 1 <= head[1] <= 127:
        raise BundleError(f"{path.name}: not an ONNX model file (empty, truncated or foreign); re-convert the bundle")


def file_identity(path: Path) -> list[int]:
    """What changes whenever the file's bytes can have changed: device, inode, size, mtime_ns, ctime_ns."""
    st = path.stat()
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _record_path(path: Path) -> Path:
    key = hashlib.sha256(str(path).encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return cache_dir() / "verified" / f"{key}.json"


def _remembered(path: Path, identity: list[int]) -> str | None:
    try:
        rec = json.loads(_record_path(path).read_text(encoding="utf-8"))
        if rec["path"] == str(path) and rec["identity"] == identity and isinstance(rec["sha256"], str):
            return rec["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no record, or a damaged one: hash again
    return None


def _remember(path: Path, identity: list[int], sha: str) -> None:
    rec = _record_path(path)
    try:
        rec.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=rec.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"path": str(path), "identity": identity, "sha256": sha}, f)
            os.replace(tmp, rec)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)  # a full disk must not leave .tmp files behind for ever
            raise
    except OSError:
        pass  # a read-only or full cache dir only means hashing again next time


def verified_sha256(path: str | Path, expected: str) -> str:
    """The sha256 of `path`, checked against `expected`; hashed once per file identity (see module docstring)."""
    path = Path(path).resolve()
    try:
        identity = file_identity(path)
        sha = _remembered(path, identity)
        if sha is None:
            sha = sha256_file(path)
            if identity == file_identity(path):  # not modified while we read it
                _remember(path, identity, sha)
    except OSError as e:
        raise BundleError(f"cannot read {path}: {e.strerror}") from None
    if sha != expected:
        raise BundleError(f"{path.name} in {path.parent} does not match the sha256 in its manifest (corrupted or "
                          "replaced); copy the bundle again or re-run `llava-local convert`")
    return sha
