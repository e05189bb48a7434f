"""Image-embedding cache: memory (LRU) in front of disk.

Contract: an embedding is stored under `cache_key(image_id, vision_sha256, preprocess)`, where `image_id` is the
sha256 of the image file's bytes, `vision_sha256` the hash of the ONNX file's actual bytes (checked against the
manifest by `integrity.verified_sha256`, not copied from it) and `preprocess` the pixel pipeline's settings, so a
different model, a re-converted or swapped graph or another preprocessing never hits a stale entry. With `shape`
given (tokens_per_image, embed_dim), an entry of any other shape, dtype or with NaN/inf is a miss.
On disk: `<cache_dir>/embeddings/<key[:2]>/<key>.npy` (float16 by default: half the
size, and the LLM sees float32 rows whose rounding error is far below the vision graph's own), written to a temp
file and renamed so a killed process never leaves a torn file. A corrupt file (empty, torn, foreign, wrong
shape) is treated as a miss and removed, so it is recomputed once, not hit forever.
Lookups need only the image id, so a resumed conversation finds its embeddings even without the image file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .preprocess import PreprocessConfig


def image_id_of(data: bytes) -> str:
    """The content hash that names an image everywhere (events, sessions, cache)."""
    return hashlib.sha256(data).hexdigest()


def cache_key(image_id: str, vision_sha256: str, preprocess: PreprocessConfig) -> str:
    blob = json.dumps([image_id, vision_sha256, preprocess.to_dict()], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


class EmbeddingCache:
    """LRU in memory (`capacity` images) + optional directory of .npy files."""

    def __init__(self, vision_sha256: str, preprocess: PreprocessConfig, directory: Path | None,
                 capacity: int = 32, disk_dtype: str = "float16", shape: tuple[int, int] | None = None) -> None:
        self.vision_sha256 = vision_sha256
        self.shape = shape  # (tokens_per_image, embed_dim): entries of another shape are misses
        self.preprocess = preprocess
        self.directory = directory
        self.capacity = capacity
        self.disk_dtype = np.dtype(disk_dtype)
        self._mem: OrderedDict[str, npt.NDArray[np.float32]] = OrderedDict()
        self.hits_memory = self.hits_disk = self.misses = 0

    def _path(self, key: str) -> Path | None:
        return None if self.directory is None else self.directory / key[:2] / f"{key}.npy"

    def get(self, image_id: str) -> npt.NDArray[np.float32] | None:
        """The embedding [N, D] of an image, from memory or disk, or None."""
        key = cache_key(image_id, self.vision_sha256, self.preprocess)
        if key in self._mem:
            self._mem.move_to_end(key)
            self.hits_memory += 1
            return self._mem[key]
        path = self._path(key)
        if path is not None and path.is_file():
            arr = self._load(path)
            if arr is not None:
                self.hits_disk += 1
                self._remember(key, arr)
                return arr
            try:
                path.unlink(missing_ok=True)  # empty, torn, foreign or wrong-shape file: recompute it once
            except OSError:
                pass
        self.misses += 1
        return None

    def _valid(self, arr: npt.NDArray) -> bool:
        want = self.shape
        return (arr.ndim == 2 and arr.dtype.kind == "f" and (want is None or tuple(arr.shape) == tuple(want))
                and bool(np.isfinite(arr).all()))

    def _load(self, path: Path) -> npt.NDArray[np.float32] | None:
        """The file's array if it is a valid entry, else None. np.load raises EOFError on an empty file, ValueError
        or OSError on a torn or foreign one, and more on crafted headers: every failure is a miss."""
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception:
            return None
        if not isinstance(arr, np.ndarray) or not self._valid(arr):
            return None
        return arr.astype(np.float32)

    def put(self, image_id: str, embedding: npt.NDArray[np.floating]) -> None:
        """Store [N, D] in memory and (best effort) on disk."""
        arr = np.ascontiguousarray(embedding, dtype=np.float32)
        if not self._valid(arr):
            return  # never cache what a later get() would reject (NaN from a broken graph: the engine reports it)
        key = cache_key(image_id, self.vision_sha256, self.preprocess)
        self._remember(key, arr)
        path = self._path(key)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npy")
            try:
                with os.fdopen(fd, "wb") as f:
                    np.save(f, arr.astype(self.disk_dtype))
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError:
            pass  # a read-only or full cache dir must not break a chat; the memory copy still works

    def _remember(self, key: str, arr: npt.NDArray[np.float32]) -> None:
        self._mem[key] = arr
        self._mem.move_to_end(key)
        while len(self._mem) > self.capacity:
            self._mem.popitem(last=False)

    def clear_memory(self) -> None:
        self._mem.clear()
