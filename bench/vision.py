"""Image encode time: ONNX Runtime (fp32, int8) vs torch eager, same weights, one 336 px image per call.

Contract: `onnx_encode(path, spec, pixels, repeats, threads)` and `torch_encode(checkpoint, pixels, repeats,
threads)` return {"seconds": median wall time over `repeats` timed runs after one warm-up run, "best": the
fastest, "cpu_seconds": the least process CPU time (with one thread: the time on an otherwise idle machine)}.
The torch side is the converter's `torch_ref.VisionEncoder` (the exact module the ONNX graph was exported from).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np


def _time(fn, repeats: int) -> dict[str, Any]:
    fn()  # warm-up: allocations, kernel selection
    runs, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        runs.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return {"seconds": statistics.median(runs), "runs": runs, "best": min(runs), "cpu_seconds": min(cpu),
            "cpu_runs": cpu}


def onnx_encode(path: Path, spec, pixels: np.ndarray, repeats: int, threads: int) -> dict[str, Any]:
    from llava_local.vision import VisionEncoder

    enc = VisionEncoder(path, spec, device="cpu", threads=threads)
    return _time(lambda: enc.encode(pixels), repeats)


def torch_encode(checkpoint: Path, pixels: np.ndarray, repeats: int, threads: int) -> dict[str, Any]:
    import torch

    from converters.layouts import load_checkpoint
    from converters.torch_ref import build_vision_encoder

    torch.set_num_threads(threads)
    encoder, _, _ = build_vision_encoder(load_checkpoint(checkpoint))
    x = torch.from_numpy(pixels)

    def run() -> None:
        with torch.inference_mode():
            encoder(x)

    return _time(run, repeats)
