"""The vision encoder: an ONNX Runtime session over the bundle's `vision*.onnx`.

Contract: `VisionEncoder(onnx_path, spec, device)` picks the best execution provider for `device`
(auto: CUDA, then CoreML, then CPU), probing quietly: a provider that is listed by ONNX Runtime but cannot load its
libraries (onnxruntime-gpu on a machine without CUDA) is detected by creating the session with ORT's logging
silenced and reading back `session.get_providers()`. `encode(pixels[B,3,S,S]) -> float32 [B, N, D]` checks the
output against the manifest's `tokens_per_image` (N) and `embed_dim` (D). `calls` counts encoder runs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import BundleError, EngineError
from .manifest import VisionSpec

# ORT provider name → the short backend name shown to users.
PROVIDERS: dict[str, str] = {
    "CUDAExecutionProvider": "CUDA",
    "CoreMLExecutionProvider": "CoreML",
    "CPUExecutionProvider": "CPU",
}
# --device → providers to try, best first (CPU is always the last resort for "auto").
DEVICE_PROVIDERS: dict[str, tuple[str, ...]] = {
    "auto": ("CUDAExecutionProvider", "CoreMLExecutionProvider", "CPUExecutionProvider"),
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider",),
    "metal": ("CoreMLExecutionProvider",),
}
_QUIET = 4  # ORT severity FATAL: CUDA load failures are expected on CPU machines, not worth a screenful


def _ort():
    """The onnxruntime module; EngineError when it is missing or broken. A Ctrl-C (or SIGTERM) that lands during
    the slow first import stays a Ctrl-C: ORT's native init turns any exception raised inside it into a plain
    ImportError ("import numpy failed", "initialization failed"), sometimes without chaining the original."""
    with _noting_signals() as seen:
        try:
            import onnxruntime as ort
        except ImportError as e:
            if seen:
                signum, handler = seen[0]
                handler(signum, None)  # raises what the signal would have raised: KeyboardInterrupt, Terminated
                raise KeyboardInterrupt from None  # a handler that returned: still not "not installed"
            if isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] == "onnxruntime":
                raise EngineError("onnxruntime is not installed; `pip install onnxruntime`") from None
            raise EngineError(f"onnxruntime is installed but does not load: {str(e).splitlines()[0]}") from None
    return ort


@contextlib.contextmanager
def _noting_signals() -> Iterator[list[tuple[int, Callable[..., Any]]]]:
    """Record SIGINT/SIGTERM arriving inside the block (their handlers still run). Main thread only: signal
    handlers run nowhere else, so in a worker thread there is nothing to record."""
    seen: list[tuple[int, Callable[..., Any]]] = []
    if threading.current_thread() is not threading.main_thread():
        yield seen
        return
    previous: dict[int, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(sig)
        if callable(handler):
            def noting(signum: int, frame: Any, handler: Callable[..., Any] = handler) -> None:
                seen.append((signum, handler))
                handler(signum, frame)
            previous[sig] = handler
            signal.signal(sig, noting)
    try:
        yield seen
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _session(ort, path: Path, provider: str, threads: int | None):
    opts = ort.SessionOptions()
    opts.log_severity_level = _QUIET
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    providers = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers)


def likely_backend(device: str = "auto") -> str:
    """The backend `open_session` will most likely give for `device` (the first of its providers that ONNX Runtime
    lists), without creating a session; a listed provider whose libraries fail to load is only found by opening."""
    available = set(_ort().get_available_providers())
    for provider in DEVICE_PROVIDERS[device]:
        if provider in available:
            return PROVIDERS[provider]
    return PROVIDERS[DEVICE_PROVIDERS[device][0]]


def open_session(path: Path, device: str = "auto", threads: int | None = None):
    """(session, provider) for the best provider `device` allows; EngineError if the device is unavailable."""
    ort = _ort()
    available = set(ort.get_available_providers())
    debug = os.environ.get("LLAVA_LOCAL_DEBUG", "") not in ("", "0")
    if not debug:
        ort.set_default_logger_severity(_QUIET)
    tried: list[str] = []
    for provider in DEVICE_PROVIDERS[device]:
        if provider not in available:
            continue
        tried.append(PROVIDERS[provider])
        try:
            sess = _session(ort, path, provider, threads)
        except Exception as e:  # ORT raises plain RuntimeError/Fail for unloadable providers and bad graphs
            if provider == "CPUExecutionProvider":
                raise BundleError(f"ONNX Runtime cannot load {path.name}: {str(e).splitlines()[0]}") from None
            if debug:
                print(f"llava-local: {provider} failed: {e}", file=sys.stderr)
            continue
        # A provider whose libraries do not load is silently dropped by ORT: check what we actually got.
        if sess.get_providers()[0] == provider:
            return sess, PROVIDERS[provider]
    wanted = {"cuda": "CUDA (install onnxruntime-gpu and the CUDA 12 runtime)",
              "metal": "CoreML (macOS with the onnxruntime wheel)"}.get(device, device)
    raise EngineError(f"--device {device}: {wanted} is not usable here (tried: {', '.join(tried) or 'none'}); "
                      "use --device auto or --device cpu")


class VisionEncoder:
    """pixel_values → image embeddings, as the bundle's ONNX graph computes them."""

    def __init__(self, onnx_path: str | Path, spec: VisionSpec, device: str = "auto",
                 threads: int | None = None) -> None:
        self.path = Path(onnx_path)
        self.spec = spec
        self.session, self.backend = open_session(self.path, device, threads)
        inputs = {i.name: i for i in self.session.get_inputs()}
        if spec.input_name not in inputs:
            raise BundleError(f"{self.path.name} has no input {spec.input_name!r} (inputs: {sorted(inputs)}); "
                              "re-run `llava-local convert`")
        outputs = [o.name for o in self.session.get_outputs()]
        if spec.output_name not in outputs:
            raise BundleError(f"{self.path.name} has no output {spec.output_name!r} (outputs: {outputs}); "
                              "re-run `llava-local convert`")
        # An fp16 export takes float16 pixels; everything else float32.
        self._in_dtype = np.float16 if inputs[spec.input_name].type == "tensor(float16)" else np.float32
        self.calls = 0
        self.images_encoded = 0

    def encode(self, pixels: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        """[B,3,S,S] normalized pixels → float32 [B, tokens_per_image, embed_dim]."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise EngineError(f"pixel batch must be [B,3,S,S], got {tuple(pixels.shape)}")
        feed = {self.spec.input_name: np.ascontiguousarray(pixels, dtype=self._in_dtype)}
        try:
            (out,) = self.session.run([self.spec.output_name], feed)
        except Exception as e:
            raise EngineError(f"vision encoder failed on input {tuple(pixels.shape)}: {str(e).splitlines()[0]}") \
                from None
        self.calls += 1
        self.images_encoded += pixels.shape[0]
        want = (pixels.shape[0], self.spec.tokens_per_image, self.spec.embed_dim)
        if tuple(out.shape) != want:
            raise BundleError(f"{self.path.name} produced {tuple(out.shape)}, the manifest says {want}; "
                              "re-run `llava-local convert`")
        return np.asarray(out, dtype=np.float32)
