"""Opening a bundle: manifest + ONNX vision encoder + GGUF language model, loaded once.

Contract: `open_model(path_or_name, RuntimeConfig) -> Model`. The model owns the llama.cpp context (so one chat
session uses it at a time), the vision encoder, the embedding cache and the bookkeeping of what the KV cache
holds (`kv`: one key per position, a token id or `(image_id, row)`). `Model.embed(image_id, pixels)` returns an
image's embedding from the cache or runs the encoder. Validation happens here, before anything native can
assert: the GGUF's input width must equal the manifest's `embed_dim`, a requested quant or vision dtype must be
in the bundle, a GPU device must be really usable.

Vision dtype when the user names none (`preferred_vision_dtype`, measured in docs/benchmarks.md): on a CPU
backend the bundle's int8 graph when it has one and the manifest records that it passed the converter's int8 gate
(`parity.int8_gate`: cosine with fp32 ≥ min_cosine), since int8 encodes an image ~4x faster there; fp16 on CUDA
when the bundle has it; otherwise the manifest's default. `ModelInfo.vision_dtype` says which was used. The
embedding cache is keyed by the vision file's sha256, so embeddings of different dtypes never mix.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .config import RuntimeConfig
from .cpuprobe import extra_buffers_ok
from .embcache import EmbeddingCache
from .engine import Engine, default_threads, gpu_offload_supported
from .errors import BundleError, EngineError, UsageError
from .integrity import check_gguf, check_onnx, verified_sha256
from .manifest import Manifest, load_manifest
from .models import resolve_model
from .paths import cache_dir
from .templates import ChatTemplate, get_template
from .vision import VisionEncoder, likely_backend

# Batch size for llama_decode: image rows and prompt tokens are fed in chunks of this many (llama.cpp's default).
N_BATCH = 512


@dataclass(frozen=True)
class ModelInfo:
    """What the UI shows about a loaded model."""

    name: str
    quant: str
    llm_backend: str  # "CPU" | "CUDA" | "Metal" | "GPU"
    vision_backend: str  # "CPU" | "CUDA" | "CoreML"
    context_length: int  # the context actually allocated (tokens)
    vision_dtype: str
    tokens_per_image: int
    bundle: str
    n_threads: int
    suggested_prompts: tuple[str, ...] = ()  # from the manifest: what a new user could ask


def _llm_backend(gpu: bool) -> str:
    if not gpu:
        return "CPU"
    import llama_cpp

    sysinfo = (llama_cpp.llama_print_system_info() or b"").decode(errors="replace").upper()
    return "CUDA" if "CUDA" in sysinfo else "Metal" if "METAL" in sysinfo else "GPU"


def int8_gate_passed(manifest: Manifest) -> bool:
    """Whether the manifest records that its int8 vision graph passed the converter's cosine gate."""
    gate = manifest.parity.get("int8_gate")
    if not isinstance(gate, dict):
        return False
    cos, floor = gate.get("cosine"), gate.get("min_cosine")
    return isinstance(cos, (int, float)) and isinstance(floor, (int, float)) and cos >= floor


def preferred_vision_dtype(manifest: Manifest, backend: str) -> str:
    """The vision graph to run on `backend` ("CPU", "CUDA", "CoreML") when the user names none."""
    files = manifest.vision.files
    if backend == "CPU" and "int8" in files and int8_gate_passed(manifest):
        return "int8"
    if backend == "CUDA" and "fp16" in files:
        return "fp16"
    return manifest.vision.default


def _pick(kind: str, flag: str, wanted: str | None, files: dict[str, str], default: str) -> str:
    key = wanted or default
    if key not in files:
        raise UsageError(f"{flag} {key}: this bundle has {kind} {', '.join(sorted(files))}")
    return key


class Model:
    """A loaded bundle. Create with `open_model`; `close()` frees the native memory."""

    def __init__(self, bundle_dir: Path, manifest: Manifest, config: RuntimeConfig) -> None:
        self.bundle_dir = bundle_dir
        self.manifest = manifest
        self.config = config
        self.quant = _pick("quantizations", "--quant", config.quant, manifest.llm.files, manifest.llm.default)
        device = config.device
        if config.vision_dtype is not None:
            self.vision_dtype = _pick("vision files", "vision dtype", config.vision_dtype, manifest.vision.files,
                                      manifest.vision.default)
        else:
            self.vision_dtype = preferred_vision_dtype(manifest, likely_backend(device))
        offload = gpu_offload_supported()
        if device in ("cuda", "metal") and not offload:
            raise EngineError(f"--device {device}: this llama-cpp-python was built without GPU support; reinstall "
                              f"it with CMAKE_ARGS=\"-DGGML_{'CUDA' if device == 'cuda' else 'METAL'}=on\" "
                              "or use --device cpu")
        gpu = offload and device != "cpu"
        threads = config.n_threads or default_threads()
        n_ctx = config.n_ctx or manifest.llm.context_length
        if n_ctx < 64:
            raise UsageError(f"--n-ctx {n_ctx} is too small; use at least 64 (the bundle supports "
                             f"{manifest.llm.context_length})")
        # Checked before anything is allocated: beyond its training context a model answers with noise, and the
        # KV cache for an absurd value takes gigabytes before llama.cpp gives up.
        if n_ctx > manifest.llm.context_length:
            raise UsageError(f"--n-ctx {n_ctx} is more than this model was trained for; use at most "
                             f"{manifest.llm.context_length}")
        vision_file, gguf = (bundle_dir / manifest.vision.files[self.vision_dtype],
                             bundle_dir / manifest.llm.files[self.quant])
        # Integrity before anything native reads the files: headers, then the sha256 (hashed once per file identity).
        check_onnx(vision_file)
        check_gguf(gguf)
        vision_sha = verified_sha256(vision_file, manifest.files[vision_file.name]["sha256"])
        verified_sha256(gguf, manifest.files[gguf.name]["sha256"])
        self.vision = VisionEncoder(vision_file, manifest.vision, device=device, threads=threads)
        picked = preferred_vision_dtype(manifest, self.vision.backend)
        if config.vision_dtype is None and picked != self.vision_dtype:
            # The provider we expected did not load (e.g. onnxruntime-gpu without a usable CUDA): pick again for
            # the backend we really got.
            self.vision_dtype, vision_file = picked, bundle_dir / manifest.vision.files[picked]
            check_onnx(vision_file)
            vision_sha = verified_sha256(vision_file, manifest.files[vision_file.name]["sha256"])
            self.vision = VisionEncoder(vision_file, manifest.vision, device=device, threads=threads)
        self.engine = Engine(gguf, n_ctx=n_ctx, n_batch=N_BATCH, n_threads=threads, gpu=gpu,
                             extra_buffers=extra_buffers_ok(gguf, self.quant), within_training_context=True)
        if self.engine.n_embd_inp != manifest.vision.embed_dim:
            self.engine.close()
            raise BundleError(
                f"bundle {bundle_dir}: the vision encoder outputs rows of {manifest.vision.embed_dim} but the language "
                f"model takes {self.engine.n_embd_inp}; the files do not belong together (re-run `llava-local convert`)"
            )
        self.cache = EmbeddingCache(vision_sha, manifest.preprocess,
                                    cache_dir() / "embeddings" if config.embedding_cache else None,
                                    shape=(manifest.vision.tokens_per_image, manifest.vision.embed_dim))
        self.template: ChatTemplate = get_template(manifest.template)
        self.stop_strings = tuple(dict.fromkeys(manifest.stop_strings + self.template.stop_strings))
        self.info = ModelInfo(
            name=manifest.name, quant=self.quant, llm_backend=_llm_backend(gpu), vision_backend=self.vision.backend,
            context_length=self.engine.n_ctx, vision_dtype=self.vision_dtype,
            tokens_per_image=manifest.vision.tokens_per_image, bundle=str(bundle_dir), n_threads=threads,
            suggested_prompts=manifest.suggested_prompts,
        )
        self.kv: list[Any] = []  # one key per KV position: token id (int) or (image_id, row)
        self.owner: object | None = None  # the ChatSession whose conversation is in the KV cache

    def embed(self, image_id: str, pixels: npt.NDArray[np.float32] | None) -> tuple[npt.NDArray[np.float32], bool,
                                                                                       float]:
        """(embedding [N, D], from_cache, seconds) for an image; runs the encoder only on a cache miss."""
        t0 = time.perf_counter()
        emb = self.cache.get(image_id)
        if emb is not None:
            return emb, True, time.perf_counter() - t0
        if pixels is None:
            raise EngineError(f"image {image_id[:12]} is not in the embedding cache and its file is not available")
        return self.encode(image_id, pixels), False, time.perf_counter() - t0

    def encode(self, image_id: str, pixels: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Run the encoder on an image the caller already looked up and missed; cache the embedding [N, D]."""
        emb = self.vision.encode(pixels)[0]
        self.cache.put(image_id, emb)
        return emb

    def claim(self, owner: object) -> None:
        """Make `owner` the session whose conversation the KV cache holds (clears it if it was someone else's)."""
        if self.owner is not owner:
            self.engine.clear()
            self.kv.clear()
            self.owner = owner

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_model(path_or_name: str | Path | None = None, config: RuntimeConfig | None = None) -> Model:
    """Resolve, validate and load a bundle (see `llava_local.models.resolve_model` for what a name means)."""
    bundle = resolve_model(path_or_name)
    return Model(bundle, load_manifest(bundle), config or RuntimeConfig())
