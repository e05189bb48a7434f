"""CLIP vision tower + projector → ONNX: `pixel_values[B,3,S,S] float32 → image_embeds[B,N,D_llm] float32`.

Contract:
- `export_fp32(encoder, size, path)` traces `torch_ref.VisionEncoder` (layer selection and CLS drop inside
  the graph) with a dynamic batch axis, opset `OPSET`, and sets `ir_version` to at most `MAX_IR_VERSION`
  explicitly (onnxruntime 1.31 reads IR ≤ 13; older runtimes in the wild read less, so we write the lowest IR
  the opset allows). The file is checked with `onnx.checker`.
- `make_fp16(fp32, out)`: weights and compute in float16, inputs/outputs stay float32 (`keep_io_types`), so the
  runtime feeds the same tensors whatever the variant.
- `make_int8(fp32, out, pixels, min_cosine)`: dynamic int8 quantization of the MatMul weights
  (onnxruntime.quantization). It is gated: the int8 graph's embeddings must reach cosine ≥ `min_cosine` with
  the fp32 graph's on `pixels`, otherwise the file is deleted and `Int8Rejected` raised.
- `fuse_fp32(path, num_heads, hidden_size, pixels)`: rewrites the fp32 graph in place with ONNX Runtime's
  transformer fusions (`onnxruntime.transformers.optimizer`, model type "clip", python fusions only, opt_level 0:
  nothing provider-specific is baked in): `com.microsoft` Attention (QKV as one MatMul), SkipLayerNormalization,
  QuickGelu, BiasGelu. These contrib ops exist in both the CPU and the CUDA execution providers of onnxruntime
  1.31; the runtime adds its own ORT_ENABLE_ALL passes at load time. The fused graph replaces the plain one only
  if it matches it on `pixels` (max |Δ| ≤ `FUSE_MAX_ABS`·max(1, max|plain|)); otherwise the plain graph stays.
  Returns a report (op counts, max |Δ|, kept or not). fp16/int8 variants are made from the plain export first.
- `run_onnx(path, pixels)`: one CPU onnxruntime session → numpy output (used by verify and the int8 gate).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from llava_local.errors import ConversionError

OPSET = 17
MAX_IR_VERSION = 8  # IR 8 is the lowest that carries opset 17; well under onnxruntime 1.31's limit of 13
INPUT_NAME, OUTPUT_NAME = "pixel_values", "image_embeds"
INT8_MIN_COSINE = 0.99
FUSE_MAX_ABS = 1e-4  # fused vs plain fp32 graph, relative to max(1, max|plain|); measured ~1e-6
FUSED_OPS = ("Attention", "SkipLayerNormalization", "QuickGelu", "BiasGelu", "FastGelu", "Gelu")


class Int8Rejected(ConversionError):
    """The int8 vision graph failed its parity gate and was not written."""


def export_fp32(encoder: Any, image_size: int, path: Path) -> Path:
    """Export the torch `VisionEncoder` to `path` (float32, dynamic batch)."""
    import warnings

    import onnx
    import torch

    dummy = torch.zeros(2, 3, image_size, image_size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(
            encoder, (dummy,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, opset_version=OPSET,
            do_constant_folding=True, dynamo=False,
        )
    model = onnx.load(str(path))
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    model.producer_name = "llava-local convert"
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def make_fp16(fp32_path: Path, out_path: Path) -> Path:
    """float16 weights/compute with float32 inputs and outputs."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    onnx.save(model, str(out_path))
    return out_path


def make_int8(fp32_path: Path, out_path: Path, pixels: np.ndarray, min_cosine: float = INT8_MIN_COSINE) -> float:
    """Dynamic int8 quantization, kept only if cosine(int8, fp32) ≥ `min_cosine`; returns the cosine."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32_path), str(out_path), weight_type=QuantType.QInt8)
    model = onnx.load(str(out_path))
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    onnx.save(model, str(out_path))
    cos = cosine(run_onnx(out_path, pixels), run_onnx(fp32_path, pixels))
    if cos < min_cosine:
        out_path.unlink(missing_ok=True)
        raise Int8Rejected(
            f"int8 vision graph rejected: cosine {cos:.4f} with fp32 is below {min_cosine}; "
            "use --vision-dtype fp16 or fp32"
        )
    return cos


def fuse_fp32(path: Path, num_heads: int, hidden_size: int, pixels: np.ndarray) -> dict[str, Any]:
    """Fuse the fp32 graph at `path` in place (see the module docstring); returns what was done."""
    import logging
    from collections import Counter

    import onnx
    from onnxruntime.transformers.optimizer import optimize_model

    fused = path.with_name(path.stem + ".fused.onnx")
    log = logging.getLogger("onnxruntime.transformers")  # "producer not matched" etc.: we checked the graph
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        model = optimize_model(str(path), model_type="clip", num_heads=num_heads, hidden_size=hidden_size,
                               opt_level=0, use_gpu=False).model
    finally:
        log.setLevel(level)
    if any(n.domain == "com.microsoft" for n in model.graph.node) and not any(
            o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))  # save_model_to_file would add it
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    model.producer_name = "llava-local convert"
    onnx.checker.check_model(model)
    onnx.save(model, str(fused))
    ops = Counter(n.op_type for n in model.graph.node if n.domain == "com.microsoft")
    plain, out = run_onnx(path, pixels), run_onnx(fused, pixels)
    max_abs = float(np.abs(out - plain).max())
    kept = max_abs <= FUSE_MAX_ABS * max(1.0, float(np.abs(plain).max())) and bool(ops)
    if kept:
        fused.replace(path)
    else:
        fused.unlink(missing_ok=True)
    return {"fused": kept, "ops": {k: ops[k] for k in FUSED_OPS if ops[k]}, "max_abs_vs_plain": max_abs,
            "domains": sorted({o.domain or "ai.onnx" for o in model.opset_import})}


def run_onnx(path: Path, pixels: np.ndarray) -> np.ndarray:
    """Run the graph on CPU: pixels (B,3,S,S) float32 → (B,N,D) float32."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run([OUTPUT_NAME], {INPUT_NAME: pixels.astype(np.float32)})[0], dtype=np.float32)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean per-token cosine similarity of two (B,N,D) arrays."""
    a2, b2 = a.reshape(-1, a.shape[-1]).astype(np.float64), b.reshape(-1, b.shape[-1]).astype(np.float64)
    num = (a2 * b2).sum(-1)
    den = np.linalg.norm(a2, axis=-1) * np.linalg.norm(b2, axis=-1) + 1e-12
    return float((num / den).mean())
