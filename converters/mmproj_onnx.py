"""An mmproj's CLIP ViT + projector as an ONNX graph, built with onnx.helper + numpy (no torch), and its numpy twin.

Contract:
- `build_onnx(mm, path)`: writes `pixel_values[B,3,S,S] float32 → image_embeds[B,N,D_llm] float32`, the output
  contract of `converters/vision_onnx.py` (dynamic batch axis "batch", opset `vision_onnx.OPSET`, IR version
  ≤ `vision_onnx.MAX_IR_VERSION`, checked by `onnx.checker`). The graph: patch conv (no bias) → prepend CLS →
  + position embeddings → pre-LN → `spec.blocks` pre-norm blocks (LN1, 4 linears + softmax attention, LN2,
  fc1 → quick-GELU or erf GELU → fc2) → drop CLS → projector (mm.0 → erf GELU → mm.2, or one linear). The
  attention is written as torch exports transformers' eager CLIP attention (MatMul/Add per projection, Reshape +
  Transpose per head, scaled QKᵀ, Softmax, MatMul) so that `vision_onnx.fuse_fp32`'s ONNX Runtime fusions can
  find it; the activations are the plain x·σ(1.702x) and 0.5x(1+erf(x/√2)) patterns for the same reason.
- `reference_forward(mm, pixels)`: the same computation in float64 numpy, the import's self-check reference.
  erf comes from `_erf` (Abramowitz–Stegun 7.1.26, |error| ≤ 1.5e-7), as numpy has none.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .mmproj import Mmproj
from .vision_onnx import INPUT_NAME, MAX_IR_VERSION, OPSET, OUTPUT_NAME


class _Graph:
    """Accumulates nodes and initializers with unique names."""

    def __init__(self) -> None:
        self.nodes: list = []
        self.inits: list = []
        self.n = 0

    def const(self, name: str, arr: np.ndarray) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def op(self, op_type: str, inputs: list[str], **attrs) -> str:
        from onnx import helper

        self.n += 1
        out = f"{op_type.lower()}_{self.n}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"{op_type}_{self.n}", **attrs))
        return out

    def linear(self, x: str, w: np.ndarray, b: np.ndarray, name: str) -> str:
        wt = self.const(f"{name}.weight_t", w.T.astype(np.float32))  # [in, out]: x @ Wᵀ
        return self.op("Add", [self.op("MatMul", [x, wt]), self.const(f"{name}.bias", b.astype(np.float32))])

    def layer_norm(self, x: str, w: np.ndarray, b: np.ndarray, eps: float, name: str) -> str:
        return self.op("LayerNormalization", [x, self.const(f"{name}.weight", w.astype(np.float32)),
                                              self.const(f"{name}.bias", b.astype(np.float32))],
                       axis=-1, epsilon=float(eps))

    def quick_gelu(self, x: str, name: str) -> str:
        k = self.const(f"{name}.k", np.array(1.702, np.float32))
        return self.op("Mul", [x, self.op("Sigmoid", [self.op("Mul", [x, k])])])

    def gelu(self, x: str, name: str) -> str:
        # x / √2 as a Div, as torch exports it: onnxruntime's Gelu fusion matches that pattern (not Mul by 1/√2)
        sqrt2 = self.const(f"{name}.sqrt2", np.array(math.sqrt(2), np.float32))
        one = self.const(f"{name}.one", np.array(1.0, np.float32))
        half = self.const(f"{name}.half", np.array(0.5, np.float32))
        erf = self.op("Erf", [self.op("Div", [x, sqrt2])])
        return self.op("Mul", [self.op("Mul", [x, self.op("Add", [erf, one])]), half])


def build_onnx(mm: Mmproj, path: Path, producer: str = "llava-local import") -> Path:
    """Write the fp32 ONNX vision graph of `mm` to `path` (see the module docstring)."""
    import onnx
    from onnx import TensorProto, helper

    s, w = mm.spec, mm.weights
    d, heads = s.width, s.heads
    hd = d // heads
    g = _Graph()
    shape_heads = g.const("shape_heads", np.array([0, 0, heads, hd], np.int64))
    shape_merge = g.const("shape_merge", np.array([0, 0, d], np.int64))
    shape_patches = g.const("shape_patches", np.array([0, d, -1], np.int64))
    # patches: Conv [B,3,S,S] → [B,D,g,g] → [B,D,g²] → [B,g²,D]
    x = g.op("Conv", [INPUT_NAME, g.const("patch_embd", w["patch_embd"].astype(np.float32))],
             kernel_shape=[s.patch_size, s.patch_size], strides=[s.patch_size, s.patch_size])
    x = g.op("Transpose", [g.op("Reshape", [x, shape_patches])], perm=[0, 2, 1])
    # CLS row broadcast over the batch: Expand([1,1,D] → [B,1,D]) with B taken from the input's shape.
    batch = g.op("Slice", [g.op("Shape", [INPUT_NAME]), g.const("zero", np.array([0], np.int64)),
                           g.const("one_i", np.array([1], np.int64))])
    cls_shape = g.op("Concat", [batch, g.const("cls_tail", np.array([1, d], np.int64))], axis=0)
    cls = g.op("Expand", [g.const("class_embd", w["class_embd"].reshape(1, 1, d).astype(np.float32)), cls_shape])
    x = g.op("Concat", [cls, x], axis=1)
    x = g.op("Add", [x, g.const("pos_embd", w["pos_embd"][None].astype(np.float32))])
    x = g.layer_norm(x, w["pre_ln.weight"], w["pre_ln.bias"], s.eps, "pre_ln")
    scale = g.const("attn_scale", np.array(hd ** -0.5, np.float32))
    for i in range(s.blocks):
        b = f"blk.{i}"
        h = g.layer_norm(x, w[f"{b}.ln1.weight"], w[f"{b}.ln1.bias"], s.eps, f"{b}.ln1")
        q = g.linear(h, w[f"{b}.attn_q.weight"], w[f"{b}.attn_q.bias"], f"{b}.attn_q")
        k = g.linear(h, w[f"{b}.attn_k.weight"], w[f"{b}.attn_k.bias"], f"{b}.attn_k")
        v = g.linear(h, w[f"{b}.attn_v.weight"], w[f"{b}.attn_v.bias"], f"{b}.attn_v")
        q = g.op("Transpose", [g.op("Reshape", [q, shape_heads])], perm=[0, 2, 1, 3])  # [B,H,T,hd]
        k = g.op("Transpose", [g.op("Reshape", [k, shape_heads])], perm=[0, 2, 3, 1])  # [B,H,hd,T]
        v = g.op("Transpose", [g.op("Reshape", [v, shape_heads])], perm=[0, 2, 1, 3])  # [B,H,T,hd]
        att = g.op("Softmax", [g.op("Mul", [g.op("MatMul", [q, k]), scale])], axis=-1)  # [B,H,T,T]
        ctx = g.op("Transpose", [g.op("MatMul", [att, v])], perm=[0, 2, 1, 3])  # [B,T,H,hd]
        ctx = g.op("Reshape", [ctx, shape_merge])
        x = g.op("Add", [x, g.linear(ctx, w[f"{b}.attn_out.weight"], w[f"{b}.attn_out.bias"], f"{b}.attn_out")])
        h = g.layer_norm(x, w[f"{b}.ln2.weight"], w[f"{b}.ln2.bias"], s.eps, f"{b}.ln2")
        h = g.linear(h, w[f"{b}.fc1.weight"], w[f"{b}.fc1.bias"], f"{b}.fc1")
        h = g.quick_gelu(h, f"{b}.act") if s.quick_gelu else g.gelu(h, f"{b}.act")
        x = g.op("Add", [x, g.linear(h, w[f"{b}.fc2.weight"], w[f"{b}.fc2.bias"], f"{b}.fc2")])
    # drop CLS: tokens 1.. along axis 1
    x = g.op("Slice", [x, g.const("one_s", np.array([1], np.int64)),
                       g.const("big", np.array([np.iinfo(np.int64).max], np.int64)),
                       g.const("axis1", np.array([1], np.int64))])
    if s.projector == "mlp2x_gelu":
        x = g.gelu(g.linear(x, w["mm0.weight"], w["mm0.bias"], "mm.0"), "mm.act")
        x = g.linear(x, w["mm2.weight"], w["mm2.bias"], "mm.2")
    else:
        x = g.linear(x, w["mm.weight"], w["mm.bias"], "mm")
    g.nodes[-1].output[0] = OUTPUT_NAME
    graph = helper.make_graph(
        g.nodes, "mmproj_vision",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 3, s.image_size, s.image_size])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", s.tokens_per_image, s.out_dim])],
        g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=producer)
    model.ir_version = MAX_IR_VERSION
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


# -- numpy reference -----------------------------------------------------------------------------------------------

def _erf(x: np.ndarray) -> np.ndarray:
    """erf by Abramowitz–Stegun 7.1.26 (|error| ≤ 1.5e-7); numpy has no erf and scipy is not a dependency."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return sign * (1.0 - poly * np.exp(-a * a))


class _Float64View:
    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        self.weights = weights

    def __getitem__(self, name: str) -> np.ndarray:
        return self.weights[name].astype(np.float64)


def _ln(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def reference_forward(mm: Mmproj, pixels: np.ndarray, *, mtmd: bool = False) -> np.ndarray:
    """pixels (B,3,S,S) → image embeddings (B,N,D_llm), float64 internally, float32 out.

    `mtmd=True` computes what llama.cpp's libmtmd (llama-cpp-python 0.3.36) computes instead, to explain its
    output: the class embedding is appended after the patches while the position rows stay in order (patch i
    gets CLS's position i, CLS gets the last one), the rows kept are 1..N (patch 0 dropped, CLS fed as the last
    image token), and the projector's GELU is the tanh approximation (`ggml_gelu`). A file that names no feature
    layer (community files) also runs one block fewer there than the file holds (llama.cpp issue #25817).
    """
    s = mm.spec
    w = _Float64View(mm.weights)  # converted per use: a CLIP-L mmproj would be 2.5 GB more as one float64 copy
    px = pixels.astype(np.float64)
    bsz, p, gsz, d = px.shape[0], s.patch_size, s.grid, s.width
    # non-overlapping P×P patches → (B, g², 3·P·P) · kernel (D, 3·P·P)ᵀ, patches in row-major grid order
    patches = px.reshape(bsz, 3, gsz, p, gsz, p).transpose(0, 2, 4, 1, 3, 5).reshape(bsz, gsz * gsz, 3 * p * p)
    x = patches @ w["patch_embd"].reshape(d, -1).T
    cls = np.broadcast_to(w["class_embd"], (bsz, 1, d))
    x = np.concatenate([x, cls] if mtmd else [cls, x], axis=1) + w["pos_embd"][None]
    x = _ln(x, w["pre_ln.weight"], w["pre_ln.bias"], s.eps)
    heads, hd = s.heads, d // s.heads
    blocks = s.blocks - 1 if mtmd and s.feature_layer is None else s.blocks
    for i in range(blocks):
        b = f"blk.{i}."
        h = _ln(x, w[b + "ln1.weight"], w[b + "ln1.bias"], s.eps)
        q, k, v = ((h @ w[b + f"attn_{n}.weight"].T + w[b + f"attn_{n}.bias"])
                   .reshape(bsz, -1, heads, hd).transpose(0, 2, 1, 3) for n in "qkv")
        att = q @ k.transpose(0, 1, 3, 2) * hd ** -0.5
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        ctx = (att @ v).transpose(0, 2, 1, 3).reshape(bsz, -1, d)
        x = x + ctx @ w[b + "attn_out.weight"].T + w[b + "attn_out.bias"]
        h = _ln(x, w[b + "ln2.weight"], w[b + "ln2.bias"], s.eps)
        h = h @ w[b + "fc1.weight"].T + w[b + "fc1.bias"]
        h = h / (1.0 + np.exp(-1.702 * h)) if s.quick_gelu else _gelu(h)
        x = x + h @ w[b + "fc2.weight"].T + w[b + "fc2.bias"]
    x = x[:, 1:]
    gelu = _gelu_tanh if mtmd else _gelu
    if s.projector == "mlp2x_gelu":
        x = gelu(x @ w["mm0.weight"].T + w["mm0.bias"]) @ w["mm2.weight"].T + w["mm2.bias"]
    else:
        x = x @ w["mm.weight"].T + w["mm.bias"]
    return x.astype(np.float32)
