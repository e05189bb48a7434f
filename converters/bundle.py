"""Build a bundle directory atomically: ONNX vision + GGUF LLM(s) + manifest.json with sha256 and parity.

Contract: `convert(ConvertOptions) -> ConvertResult`. Everything is written into a hidden temporary directory
next to the target (`.NAME.partial-XXXX`, same filesystem) and renamed into place only after every step,
verification included, has succeeded, so an interrupted or failed convert never leaves a directory that
looks like a valid bundle; on an exception (SIGTERM included: the CLI turns it into one) the temporary directory
is removed, and a later convert into the same parent removes work dirs whose owner process is gone (a kill -9,
a power cut). The finished bundle's mode follows the umask like any `mkdir` (mkdtemp's 0700 is for the work dir).

The output is never the source, inside it or around it. An existing non-empty target is refused unless
`force`, and even then only a previous bundle (it has a manifest.json) is replaced, at the final rename:
`--force` never deletes a directory that is not a bundle.

Files: `vision.onnx` (fp32, always: it is the source of the other variants and the verification reference),
`vision-fp16.onnx` / `vision-int8.onnx` on request, `llm-<quant>.gguf` for each requested quant. The F32/F16
base GGUF that quantization starts from is kept only if it was requested.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llava_local import __version__
from llava_local.errors import BundleError, ConversionError
from llava_local.manifest import (
    DEFAULT_LLM_QUANT,
    LLM_QUANTS,
    VISION_DTYPES,
    LLMSpec,
    Manifest,
    VisionSpec,
    file_entry,
    parse_suggested_prompts,
    write_manifest,
)
from llava_local.templates import get_template

VISION_FILES = {"fp32": "vision.onnx", "fp16": "vision-fp16.onnx", "int8": "vision-int8.onnx"}


def llm_file(quant: str) -> str:
    return f"llm-{quant}.gguf"


@dataclass(frozen=True)
class ConvertOptions:
    src: Path
    out: Path
    quants: tuple[str, ...] = (DEFAULT_LLM_QUANT,)  # the first is the manifest default
    vision_dtypes: tuple[str, ...] = ("fp32",)  # the first is the manifest default; fp32 is always written
    vision_tower: Path | None = None
    template: str | None = None
    name: str | None = None
    verify: bool = True
    force: bool = False
    n_tokens: int = 16  # greedy answer length compared during verification
    fuse_vision: bool = True  # ORT transformer fusions in the shipped fp32 vision.onnx (see vision_onnx.fuse_fp32)
    suggested_prompts: tuple[str, ...] = ()  # questions the chat app and `info` show to a new user

    def __post_init__(self) -> None:
        bad = [q for q in self.quants if q not in LLM_QUANTS]
        if bad or not self.quants:
            raise ConversionError(f"unknown --quant {bad}; choose from {', '.join(LLM_QUANTS)}")
        bad = [d for d in self.vision_dtypes if d not in VISION_DTYPES]
        if bad or not self.vision_dtypes:
            raise ConversionError(f"unknown --vision-dtype {bad}; choose from {', '.join(VISION_DTYPES)}")
        try:
            parse_suggested_prompts(list(self.suggested_prompts), "--suggest")
        except BundleError as e:
            raise ConversionError(str(e)) from None


@dataclass
class ConvertResult:
    bundle: Path
    manifest: Manifest
    failures: list[str] = field(default_factory=list)


class Progress:
    """One stderr line per step, with its duration: `convert [2/7] vision.onnx (fp32) ... 1.3s`."""

    def __init__(self, total: int, stream: Any = None, enabled: bool = True, label: str = "convert") -> None:
        self.total, self.n, self.enabled, self.label = total, 0, enabled, label
        self.stream = stream or sys.stderr

    def step(self, what: str) -> _Step:
        self.n += 1
        return _Step(self, f"{self.label} [{self.n}/{self.total}] {what}")

    def note(self, msg: str) -> None:
        if self.enabled:
            print(f"{self.label:<10}{msg}", file=self.stream, flush=True)  # notes start in one column


class _Step:
    def __init__(self, progress: Progress, label: str) -> None:
        self.p, self.label = progress, label

    def __enter__(self) -> _Step:
        self.t0 = time.perf_counter()
        if self.p.enabled:
            print(f"{self.label} ...", file=self.p.stream, flush=True)
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if self.p.enabled and exc_type is None:
            print(f"{self.label} done in {time.perf_counter() - self.t0:.1f}s", file=self.p.stream, flush=True)


def _overlaps(target: Path, source: Path) -> str | None:
    """How `target` collides with `source` ("is", "is inside", "contains"), or None. Both resolved."""
    if target == source:
        return "is"
    if target.is_relative_to(source):
        return "is inside"
    if source.is_relative_to(target):
        return "contains"
    return None


def _prepare_target(out: Path, force: bool, sources: tuple[Path | None, ...] = (), marker: str = "manifest.json"
                    ) -> Path:
    """The resolved output dir: never the source, inside it or above it; with `force`, an existing non-empty dir is
    replaced only if it holds `marker` (what this command writes: a bundle's manifest, an export's export.json)."""
    target = out.expanduser().resolve()
    for src in sources:
        if src is None:
            continue
        src = Path(src).expanduser().resolve()
        how = _overlaps(target, src)
        if how:
            raise ConversionError(f"output {target} {how} the source {src}; choose an -o outside it")
    if target.exists():
        if not target.is_dir():
            raise ConversionError(f"output {target} exists and is not a directory; choose another -o")
        if any(target.iterdir()):
            if not force:
                raise ConversionError(f"output {target} exists and is not empty; pass --force to replace it")
            if not (target / marker).is_file():
                what = "a bundle" if marker == "manifest.json" else "an earlier output of this command"
                raise ConversionError(f"output {target} is not {what} (no {marker}) and --force only replaces "
                                      f"{what.removeprefix('a ').removeprefix('an ')}s; choose another -o or remove "
                                      "it yourself")
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


PARTIAL = ".partial-"
OWNER_FILE = ".owner.json"
STALE_SECONDS = 24 * 3600  # a work dir without a readable owner is left alone for a day (it may be another tool's)


def _boot_id() -> str:
    """Changes at every boot (Linux); after a reboot every recorded pid is dead, whatever runs under it now."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _workdir(target: Path) -> Path:
    """A fresh `.NAME.partial-XXXX` next to the target, with an owner record for `_clean_stale`."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}{PARTIAL}", dir=target.parent))
    (tmp / OWNER_FILE).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "boot": _boot_id(),
                                               "started": time.time()}))
    return tmp


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _clean_stale(target: Path, note: Callable[[str], None] = lambda msg: None) -> list[Path]:
    """Remove work dirs of earlier converts into `target` that can no longer finish; returns them.

    A work dir goes when its owner (same host) is no longer running, or, with no readable owner record, when it is
    older than STALE_SECONDS. Only real directories named `.NAME.partial-*` are touched, never symlinks."""
    removed = []
    now = time.time()
    prefix = f".{target.name}{PARTIAL}"
    for p in target.parent.iterdir():  # not glob: a bundle name may hold [ or *
        if not p.name.startswith(prefix) or p.is_symlink() or not p.is_dir():
            continue
        try:
            owner = json.loads((p / OWNER_FILE).read_text())
            rebooted = bool(owner.get("boot")) and owner["boot"] != _boot_id()
            stale = owner["host"] == socket.gethostname() and (rebooted or not _pid_alive(int(owner["pid"])))
        except (OSError, ValueError, KeyError, TypeError):
            try:
                stale = now - p.stat().st_mtime > STALE_SECONDS
            except OSError:
                continue
        if stale:
            shutil.rmtree(p, ignore_errors=True)
            note(f"removed {p.name}, left by an interrupted convert")
            removed.append(p)
    return removed


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _publish(tmp: Path, target: Path) -> None:
    """Swap the finished temporary directory into place (a rename on the same filesystem)."""
    (tmp / OWNER_FILE).unlink(missing_ok=True)
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; a bundle is an ordinary directory
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{time.time_ns()}")
        target.rename(old)
    try:
        tmp.rename(target)
    except BaseException:
        if old is not None:
            old.rename(target)  # never leave the user without the bundle they had
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged(target: Path, note: Callable[[str], None] = lambda msg: None) -> Iterator[Path]:
    """The work dir a command builds its output in: stale ones of dead runs are cleaned first (`_clean_stale`), a
    fresh `.NAME.partial-XXXX` with an owner record is yielded, published at `target` when the block ends normally
    (`_publish`), removed on any exception (SIGTERM, Ctrl-C, a failed check): never a half-written output."""
    _clean_stale(target, note)
    tmp = _workdir(target)
    try:
        yield tmp
        _publish(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def convert(opts: ConvertOptions, *, show_progress: bool = True, step_hook: Callable[[str], None] | None = None,
            ) -> ConvertResult:
    """Convert `opts.src` into a bundle at `opts.out`. Raises ConversionError on failure (nothing published).

    `step_hook(name)` is called before each stage (tests use it to make a stage fail).
    """
    from . import layouts, llm_gguf, quantize, torch_ref, verify, vision_onnx

    hook = step_hook or (lambda name: None)
    target = _prepare_target(opts.out, opts.force, (opts.src, opts.vision_tower))
    base = "f32" if "f32" in opts.quants else "f16"
    extra_vision = [d for d in dict.fromkeys(opts.vision_dtypes) if d != "fp32"]
    quants = list(dict.fromkeys(opts.quants))
    progress = Progress(4 + len(extra_vision) + len([q for q in quants if q != base]) + int(opts.verify)
                        + int(opts.fuse_vision), enabled=show_progress)
    with staged(target, progress.note) as tmp:
        hook("load")
        with progress.step(f"load checkpoint {opts.src}"):
            ckpt = layouts.load_checkpoint(opts.src, vision_tower=opts.vision_tower, template=opts.template)
            progress.note(f"layout {ckpt.layout}, projector {ckpt.projector_type}, {ckpt.tokens_per_image} image "
                          f"tokens x {ckpt.embed_dim}, preprocess {ckpt.preprocess.mode} {ckpt.preprocess.size}px")
        hook("vision")
        with progress.step("vision.onnx (fp32)"):
            encoder, _, _ = torch_ref.build_vision_encoder(ckpt)
            vision_onnx.export_fp32(encoder, ckpt.preprocess.size, tmp / VISION_FILES["fp32"])
            del encoder
        vc = ckpt.vision_config
        # parity gets the int8 gate; build_info (the fusion report) lands in the manifest's provenance
        vision_files, parity, build_info = vision_variants(
            tmp, extra_vision, _gate_pixels(ckpt), progress, hook,
            fuse=(vc.num_attention_heads, vc.hidden_size) if opts.fuse_vision else None)
        hook("gguf")
        with progress.step(f"{llm_file(base)} (gguf-py)"):
            llm_gguf.write_gguf(ckpt, tmp / llm_file(base), base, name=opts.name or target.name)
        llm_files = {base: llm_file(base)} if base in quants else {}
        for quant in quants:
            if quant == base:
                continue
            hook(f"quantize-{quant}")
            with progress.step(f"{llm_file(quant)} (llama.cpp quantize)"):
                quantize.quantize(tmp / llm_file(base), tmp / llm_file(quant), quant)
                llm_files[quant] = llm_file(quant)
        report: dict[str, Any] = {"verified": False}
        failures: list[str] = []
        entries: dict[str, dict[str, Any]] = {}
        if opts.verify:
            hook("verify")
            with progress.step("verify against torch"):
                # The base GGUF is verified too (it is what the quants came from), reported even if not shipped.
                files = {base: llm_file(base), **llm_files}
                # A provisional manifest lets the runtime open the work dir like a finished bundle.
                write_manifest(tmp, _manifest(opts, ckpt, target, tmp, vision_files, files, {}, entries, build_info))
                gated = tuple(q for q in files if q in verify.Gates().answer_quants)
                report = verify.verify(ckpt, tmp, vision_files, files, n_tokens=opts.n_tokens,
                                       progress=progress.note, runtime_quants=gated)
                failures = verify.failures(report)
            if failures:
                raise ConversionError("parity check failed: " + "; ".join(failures)
                                      + " (nothing was written; --no-verify skips the check)")
        if base not in quants:
            (tmp / llm_file(base)).unlink()
        report.update(parity)
        hook("manifest")
        with progress.step("manifest.json (sha256 of every file)"):
            manifest = _manifest(opts, ckpt, target, tmp, vision_files, llm_files, report, entries, build_info)
            write_manifest(tmp, manifest)
    return ConvertResult(bundle=target, manifest=manifest, failures=failures)


def vision_variants(work: Path, extra_dtypes: list[str], pixels: Any, progress: Progress,
                    hook: Callable[[str], None], fuse: tuple[int, int] | None) -> tuple[dict[str, str], dict[str, Any],
                                                                                         dict[str, Any]]:
    """From the plain fp32 `work/vision.onnx`: the fp16 and (gated) int8 variants asked for, then the fp32 graph fused
    in place when `fuse` gives (attention heads, width). `pixels` (B,3,S,S) feed the int8 gate and the fusion check.
    Returns (vision files by dtype, parity entries (`int8_gate`), build info (`vision_fusion`))."""
    from . import vision_onnx

    fp32 = work / VISION_FILES["fp32"]
    files, parity, build = {"fp32": VISION_FILES["fp32"]}, {}, {}
    for dtype in extra_dtypes:
        hook(f"vision-{dtype}")
        with progress.step(VISION_FILES[dtype]):
            if dtype == "fp16":
                vision_onnx.make_fp16(fp32, work / VISION_FILES["fp16"])
            else:
                try:
                    cos = vision_onnx.make_int8(fp32, work / VISION_FILES["int8"], pixels)
                    parity["int8_gate"] = {"cosine": cos, "min_cosine": vision_onnx.INT8_MIN_COSINE, "written": True}
                except vision_onnx.Int8Rejected as e:
                    progress.note(f"warning: {e}")
                    parity["int8_gate"] = {"written": False, "reason": str(e)}
                    continue
            files[dtype] = VISION_FILES[dtype]
    if fuse is not None:
        hook("vision-fuse")
        with progress.step("vision.onnx: fuse attention, LayerNorm, GELU (onnxruntime.transformers)"):
            fusion = vision_onnx.fuse_fp32(fp32, fuse[0], fuse[1], pixels)
            build["vision_fusion"] = fusion
            ops = ", ".join(f"{n} {k}" for k, n in fusion["ops"].items()) or "nothing fused"
            progress.note(f"fused graph: {ops}; max|Δ| vs plain {fusion['max_abs_vs_plain']:.1e}"
                          + ("" if fusion["fused"] else " (kept the plain graph)"))
    return files, parity, build


def _gate_pixels(ckpt: Any) -> Any:
    from .verify import sample_pixels

    return sample_pixels(ckpt.preprocess)


def _manifest(opts: ConvertOptions, ckpt: Any, target: Path, tmp: Path, vision_files: dict[str, str],
              llm_files: dict[str, str], report: dict[str, Any], entries: dict[str, dict[str, Any]],
              build_info: dict[str, Any] | None = None) -> Manifest:
    """The manifest; `entries` caches sha256/size per file name (a multi-GB GGUF is hashed once)."""
    template = get_template(ckpt.template)
    vision_default = next((d for d in opts.vision_dtypes if d in vision_files), "fp32")
    llm_default = next((q for q in opts.quants if q in llm_files), next(iter(llm_files)))
    names = [*vision_files.values(), *llm_files.values()]
    provenance = {
        "source": str(Path(opts.src).expanduser().resolve()),
        "layout": ckpt.layout,
        "vision_tower": str(ckpt.vision_source) if ckpt.vision_source else None,
        "converter": f"llava-local {__version__}",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "projector": ckpt.projector_type,
        "vision_feature_layer": ckpt.feature_layer,
        "drop_cls": ckpt.drop_cls,
        "image_token_id": ckpt.image_token_id,
        "skipped_tensors": ckpt.skipped,
        **(build_info or {}),
        **ckpt.provenance,
    }
    return Manifest(
        name=opts.name or target.name,
        preprocess=ckpt.preprocess,
        vision=VisionSpec(files=vision_files, default=vision_default, tokens_per_image=ckpt.tokens_per_image,
                          embed_dim=ckpt.embed_dim),
        llm=LLMSpec(files=llm_files, default=llm_default, context_length=int(ckpt.context_length)),
        template=ckpt.template,
        suggested_prompts=tuple(opts.suggested_prompts),
        stop_strings=template.stop_strings,
        files={n: entries[n] if n in entries else entries.setdefault(n, file_entry(tmp / n)) for n in names},
        provenance=provenance,
        parity=report,
    )
