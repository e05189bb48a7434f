"""Image encode time: ONNX Runtime (fp32 plain and fused, int8) vs torch eager, same weights, one 336 px image per call.

Contract: `onnx_encode(path, spec, pixels, repeats, threads)` and `torch_encode(checkpoint, pixels, repeats,
threads)` return {"seconds": median wall time over `repeats` timed runs after one warm-up run, "best": the
fastest, "cpu_seconds": the least process CPU time (with one thread: the time on an otherwise idle machine)}.
The torch side is the converter's `torch_ref.VisionEncoder` (the exact module the ONNX graph was exported from).
`fp32_graphs(bundle, checkpoint, out)` gives {"plain": path, "fused": path}: the bundle's `vision.onnx` is one of
them (the converter fuses it unless `--no-fuse-vision`; its provenance says which) and the other is made once
and cached under `out` (`converters.vision_onnx.fuse_fp32` on a copy, or a plain re-export).
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


def fp32_graphs(bundle: Path, checkpoint: Path, out: Path) -> dict[str, Path]:
    import shutil

    from llava_local.manifest import load_manifest

    m = load_manifest(bundle)
    shipped = bundle / m.vision.files["fp32"]
    fusion = m.provenance.get("vision_fusion") or {}
    if fusion.get("fused"):
        plain = out / "vision-plain.onnx"
        if not plain.is_file():
            from converters.layouts import load_checkpoint
            from converters.torch_ref import build_vision_encoder
            from converters.vision_onnx import export_fp32

            ckpt = load_checkpoint(checkpoint)
            export_fp32(build_vision_encoder(ckpt)[0], ckpt.preprocess.size, plain)
        return {"plain": plain, "fused": shipped}
    fused = out / "vision-fused.onnx"
    if not fused.is_file():
        import numpy as np

        from converters.layouts import load_checkpoint
        from converters.vision_onnx import fuse_fp32

        vc = load_checkpoint(checkpoint).vision_config
        tmp = out / "vision-fused.tmp.onnx"
        shutil.copyfile(shipped, tmp)
        rng = np.random.default_rng(0)
        size = m.preprocess.size
        pixels = rng.standard_normal((1, 3, size, size)).astype(np.float32)
        report = fuse_fp32(tmp, vc.num_attention_heads, vc.hidden_size, pixels)
        if not report["fused"]:
            tmp.unlink(missing_ok=True)
            raise RuntimeError(f"fusion did not pass its parity check: {report}")
        tmp.replace(fused)
    return {"plain": shipped, "fused": fused}


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
