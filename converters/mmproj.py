"""llama.cpp mmproj GGUF (LLaVA-1.5 legacy layout) ↔ CLIP ViT + projector weights. Torch-free on the read side.

Contract:
- `read_mmproj(path) -> Mmproj`: validates an mmproj written by llama.cpp's legacy LLaVA route
  (`convert_image_encoder_to_gguf.py --llava-projector`; tech memo §4) and returns its `MmprojSpec` plus every
  tensor dequantized to float32 numpy (F32/F16/BF16/Q8_0/K-quants... through `gguf.quants.dequantize`), named
  canonically (`Mmproj.weights` keys, see `_CANON`) in PyTorch orientation (Linear weights [out, in]).
  Everything wrong with the file is one `ConversionError` line: missing file, not a GGUF / truncated, a language
  model GGUF instead of an mmproj, no vision encoder or no LLaVA projector, an unsupported projector type,
  missing tensors or shapes that disagree with the header.
- The legacy script names CLIP's `mlp.fc1` `ffn_down` and `fc2` `ffn_up` (clip.cpp swaps them back by shape);
  we read the shapes: the matrix with `width` inputs is fc1, whatever its name.
- Semantics: the file holds the CLIP blocks up to the LLaVA feature layer (`block_count` = layers − 1 for
  select-layer −2) and no post-LayerNorm; the image features are the output of the last block applied, CLS
  dropped, then the projector. `clip.vision.feature_layer` (a non-negative hidden-states index), when present,
  says how many blocks to apply; without it every block in the file is applied (what LLaVA itself computes).
- Projectors: `clip.projector_type = "mlp"` with `mm.0` + `mm.2` (LLaVA-1.5 mlp2x_gelu, exact erf GELU in
  between) or the legacy LLaVA-v1 linear projector, which the legacy converter names `mm.weight`/`mm.bias`.
  Every other projector type (ldp, resampler, mlp_norm, ...) is refused.
- `write_mmproj(ckpt, path)`: a `converters.layouts.Checkpoint` (torch tensors; this module never imports torch)
  → an mmproj in the legacy layout: the keys the legacy converter writes, block_count = the blocks needed for
  the feature layer, no post-LN, F16 for every 2-D/4-D `.weight` (position embeddings and the conv kernel
  included), F32 for biases, norms and the class embedding (byte-identical tensors to the legacy script's output,
  checked with transformers 4.49 on the tiny checkpoint), `mm.0`/`mm.2` (never gguf-py's generic `mm.1`). It
  also writes `clip.vision.feature_layer` (as the legacy converter does when the config names a feature layer:
  llama.cpp then applies every block, see docs/interop.md) and `llava_local.preprocess` / `llava_local.resample`
  (our own keys; clip.cpp ignores them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llava_local.errors import ConversionError
from llava_local.preprocess import CLIP_MEAN, CLIP_STD

DESCRIPTION = "image encoder for LLaVA"
SUPPORTED_PROJECTORS = ("mlp",)
# GGUF tensor name → canonical name ({n}: block index). fc1/fc2 are decided by shape, see `_ffn`.
_CANON = {
    "v.patch_embd.weight": "patch_embd",
    "v.class_embd": "class_embd",
    "v.position_embd.weight": "pos_embd",
    "v.pre_ln.weight": "pre_ln.weight",
    "v.pre_ln.bias": "pre_ln.bias",
    "mm.0.weight": "mm0.weight", "mm.0.bias": "mm0.bias",
    "mm.2.weight": "mm2.weight", "mm.2.bias": "mm2.bias",
    "mm.weight": "mm.weight", "mm.bias": "mm.bias",
}
_BLOCK = re.compile(r"^v\.blk\.(\d+)\.(attn_q|attn_k|attn_v|attn_out|ln1|ln2|ffn_down|ffn_up)\.(weight|bias)$")
BLOCK_PARTS = ("attn_q", "attn_k", "attn_v", "attn_out", "ln1", "ln2", "fc1", "fc2")
# Checkpoint (CLIPVisionModel keys) → legacy GGUF names, for the writer. fc1 → ffn_down, fc2 → ffn_up (sic).
# In the order of CLIPEncoderLayer's state dict, which is the order the legacy converter writes.
_HF_BLOCK = {"self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.q_proj": "attn_q",
             "self_attn.out_proj": "attn_out", "layer_norm1": "ln1", "mlp.fc1": "ffn_down", "mlp.fc2": "ffn_up",
             "layer_norm2": "ln2"}


@dataclass(frozen=True)
class MmprojSpec:
    """What an mmproj file says about its vision encoder (all counts are what the graph applies)."""

    image_size: int
    patch_size: int
    width: int  # CLIP hidden size
    heads: int
    eps: float
    blocks: int  # encoder blocks applied (= file blocks, or the feature layer when the file names one)
    blocks_in_file: int
    ffn: int
    projector: str  # "mlp2x_gelu" | "linear"
    quick_gelu: bool  # clip.use_gelu false → CLIP's quick-GELU in the blocks
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    out_dim: int  # projector output width = the LLM's n_embd
    feature_layer: int | None = None
    name: str = ""
    preprocess_mode: str | None = None  # only our own exports say (llava_local.preprocess)
    resample: str | None = None
    tensor_types: dict[str, int] = field(default_factory=dict)  # GGML type name → tensor count

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def tokens_per_image(self) -> int:
        return self.grid * self.grid


@dataclass
class Mmproj:
    spec: MmprojSpec
    weights: dict[str, np.ndarray]  # canonical name → float32, PyTorch orientation
    path: Path


def open_gguf(path: str | Path, what: str) -> Any:
    """A `gguf.GGUFReader` over `path`, or one ConversionError line (missing, not a GGUF, truncated)."""
    import gguf

    p = Path(path).expanduser()
    if not p.is_file():
        raise ConversionError(f"{what} not found: {p}")
    with open(p, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ConversionError(f"{p} is not a GGUF file (it starts with {magic!r}, not b'GGUF')")
    try:
        return gguf.GGUFReader(str(p))
    except Exception as e:  # gguf-py raises ValueError/IndexError/struct errors on a cut-off file
        raise ConversionError(f"{p}: cannot read this GGUF (truncated or corrupt? {type(e).__name__}: {e})") from None


def field_value(reader: Any, key: str, default: Any = None) -> Any:
    """A KV field as a Python value (str, int, float, bool or list), `default` when absent."""
    f = reader.fields.get(key)
    if f is None:
        return default
    try:
        return f.contents()
    except Exception:  # a malformed field in a damaged file
        raise ConversionError(f"GGUF key {key!r} is malformed") from None


def _required(reader: Any, key: str, path: Path) -> Any:
    value = field_value(reader, key)
    if value is None:
        raise ConversionError(f"{path}: mmproj key {key!r} is missing (not a LLaVA mmproj from llama.cpp's converter?)")
    return value


def _dequantize(t: Any, path: Path) -> np.ndarray:
    import gguf

    shape = tuple(int(n) for n in reversed(t.shape))  # GGUF ne order → numpy/PyTorch order
    try:
        arr = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
        return np.asarray(arr, dtype=np.float32).reshape(shape)
    except (NotImplementedError, ValueError, KeyError) as e:
        raise ConversionError(f"{path}: tensor {t.name} of type {t.tensor_type.name} cannot be read ({e})") from None


def read_mmproj(path: str | Path) -> Mmproj:
    """Read and validate an mmproj GGUF (see the module docstring)."""
    p = Path(path).expanduser()
    reader = open_gguf(p, "mmproj")
    arch = field_value(reader, "general.architecture")
    if arch != "clip":
        raise ConversionError(f"{p} is a {arch or 'non-CLIP'} model GGUF, not an mmproj (image encoder); "
                              "pass the mmproj-*.gguf file to --mmproj")
    if not field_value(reader, "clip.has_vision_encoder", False):
        raise ConversionError(f"{p}: this CLIP GGUF has no vision encoder (clip.has_vision_encoder is false)")
    proj_type = field_value(reader, "clip.projector_type", "mlp")
    if not field_value(reader, "clip.has_llava_projector", False) or proj_type not in SUPPORTED_PROJECTORS:
        raise ConversionError(f"{p}: projector type {proj_type!r} is not supported (only LLaVA-1.5's 'mlp' "
                              "projector and the linear LLaVA-v1 projector)")
    if field_value(reader, "clip.vision.mm_patch_merge_type") == "spatial_unpad" or \
            field_value(reader, "clip.vision.image_grid_pinpoints"):
        raise ConversionError(f"{p}: a LLaVA-1.6 (NeXT) mmproj (image grid, spatial_unpad); only LLaVA-1.5-style "
                              "single-image encoders are supported")
    raw: dict[str, np.ndarray] = {}
    types: dict[str, int] = {}
    for t in reader.tensors:
        raw[t.name] = _dequantize(t, p)
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    width = int(_required(reader, "clip.vision.embedding_length", p))
    n_file = int(_required(reader, "clip.vision.block_count", p))
    feature = field_value(reader, "clip.vision.feature_layer")
    if isinstance(feature, list) and len(feature) > 1:
        raise ConversionError(f"{p}: several vision feature layers {feature} (LLaVA-NeXT/granite) are not supported")
    feature_layer = int(feature[0]) if isinstance(feature, list) and feature else None
    blocks = n_file if feature_layer is None else feature_layer
    if not 0 <= blocks <= n_file:
        raise ConversionError(f"{p}: feature layer {feature_layer} needs more than the {n_file} blocks in the file")
    weights = _canonical(raw, n_file, width, p)
    projector = "mlp2x_gelu" if "mm0.weight" in weights else "linear"
    last = weights["mm2.weight" if projector == "mlp2x_gelu" else "mm.weight"]
    mean = field_value(reader, "clip.vision.image_mean", list(CLIP_MEAN))
    std = field_value(reader, "clip.vision.image_std", list(CLIP_STD))
    for name, values in (("image_mean", mean), ("image_std", std)):  # _snap indexes three of them
        if not isinstance(values, list) or len(values) != 3:
            raise ConversionError(f"{p}: clip.vision.{name} must hold 3 numbers, not {values!r}")
    spec = MmprojSpec(
        image_size=int(_required(reader, "clip.vision.image_size", p)),
        patch_size=int(_required(reader, "clip.vision.patch_size", p)),
        width=width, heads=int(_required(reader, "clip.vision.attention.head_count", p)),
        eps=float(_required(reader, "clip.vision.attention.layer_norm_epsilon", p)),
        blocks=blocks, blocks_in_file=n_file, ffn=int(field_value(reader, "clip.vision.feed_forward_length", 0)),
        projector=projector, quick_gelu=not field_value(reader, "clip.use_gelu", False),
        mean=_snap(mean, CLIP_MEAN), std=_snap(std, CLIP_STD),
        out_dim=int(last.shape[0]), feature_layer=feature_layer, name=str(field_value(reader, "general.name", "")),
        preprocess_mode=field_value(reader, "llava_local.preprocess"),
        resample=field_value(reader, "llava_local.resample"), tensor_types=types,
    )
    _check_header(spec, p)
    _check_shapes(spec, weights, p)
    return Mmproj(spec=spec, weights=weights, path=p)


def _check_header(s: MmprojSpec, path: Path) -> None:
    """The header numbers every later step divides by or indexes with: one line when a file's are impossible."""
    sizes = {"image_size": s.image_size, "patch_size": s.patch_size, "embedding_length": s.width,
             "head_count": s.heads}
    bad = [f"{k} {v}" for k, v in sizes.items() if v <= 0]
    if bad or not (np.isfinite(s.eps) and s.eps > 0):
        raise ConversionError(f"{path}: impossible header ({', '.join(bad) or f'layer_norm_epsilon {s.eps}'})")
    if s.width % s.heads or s.image_size % s.patch_size:
        raise ConversionError(f"{path}: width {s.width} / heads {s.heads} or image {s.image_size} / patch "
                              f"{s.patch_size} do not divide")


def _snap(values: list[float], known: tuple[float, float, float]) -> tuple[float, float, float]:
    """GGUF stores mean/std as float32: give back the CLIP constants themselves when that is what they are."""
    if len(values) >= 3 and all(np.float32(v) == np.float32(k) for v, k in zip(values, known)):
        return known
    return (float(values[0]), float(values[1]), float(values[2]))


def _canonical(raw: dict[str, np.ndarray], n_file: int, width: int, path: Path) -> dict[str, np.ndarray]:
    """GGUF names → canonical names; fc1/fc2 by shape; every tensor accounted for."""
    out: dict[str, np.ndarray] = {}
    ffn: dict[int, list[tuple[str, np.ndarray, np.ndarray | None]]] = {}
    ignored = []
    for name, arr in raw.items():
        if name in _CANON:
            out[_CANON[name]] = arr
            continue
        m = _BLOCK.match(name)
        if m is None:
            if name.startswith("v.post_ln."):
                ignored.append(name)  # applied after the last block only by non-LLaVA graphs
                continue
            raise ConversionError(f"{path}: unexpected tensor {name!r} (not a LLaVA-1.5 mmproj?)")
        i, part, kind = int(m.group(1)), m.group(2), m.group(3)
        if i >= n_file:
            raise ConversionError(f"{path}: tensor {name} is beyond block_count {n_file}")
        if part in ("ffn_down", "ffn_up"):
            if kind == "weight":
                ffn.setdefault(i, []).append((part, arr, raw.get(f"v.blk.{i}.{part}.bias")))
            continue
        out[f"blk.{i}.{part}.{kind}"] = arr
    for i, mats in ffn.items():
        if len(mats) != 2:
            raise ConversionError(f"{path}: block {i} needs two FFN matrices, found {len(mats)}")
        for part, w, b in mats:
            # fc1 maps width → ffn (weight [ffn, width]); fc2 maps back (weight [width, ffn]); names are swapped
            # by the legacy converter, so the shape decides. Square FFNs cannot be told apart: trust the legacy
            # naming there (ffn_down = fc1).
            if w.shape[1] == width and (w.shape[0] != width or part == "ffn_down"):
                role = "fc1"
            else:
                role = "fc2"
            if f"blk.{i}.{role}.weight" in out:
                raise ConversionError(f"{path}: block {i} has two FFN matrices of the same shape {w.shape}")
            out[f"blk.{i}.{role}.weight"] = w
            if b is None:
                raise ConversionError(f"{path}: v.blk.{i}.{part}.bias is missing")
            out[f"blk.{i}.{role}.bias"] = b
    if "mm0.weight" not in out and "mm.weight" not in out:
        kinds = sorted({n.split(".")[1] for n in raw if n.startswith("mm.")})
        raise ConversionError(f"{path}: no LLaVA projector tensors (mm.0/mm.2 or mm.weight); found mm.{kinds} — "
                              "this projector variant is not supported")
    if "mm0.weight" in out and "mm2.weight" not in out:
        raise ConversionError(f"{path}: projector has mm.0 but no mm.2 (a projector variant that is not supported)")
    return out


def _check_shapes(s: MmprojSpec, w: dict[str, np.ndarray], path: Path) -> None:
    d, n_pos = s.width, s.tokens_per_image + 1
    want: dict[str, tuple[int, ...]] = {
        "patch_embd": (d, 3, s.patch_size, s.patch_size), "class_embd": (d,), "pos_embd": (n_pos, d),
        "pre_ln.weight": (d,), "pre_ln.bias": (d,),
    }
    f = w["blk.0.fc1.weight"].shape[0] if "blk.0.fc1.weight" in w else s.ffn
    for i in range(s.blocks_in_file):
        for part in ("attn_q", "attn_k", "attn_v", "attn_out"):
            want[f"blk.{i}.{part}.weight"], want[f"blk.{i}.{part}.bias"] = (d, d), (d,)
        for part in ("ln1", "ln2"):
            want[f"blk.{i}.{part}.weight"], want[f"blk.{i}.{part}.bias"] = (d,), (d,)
        want[f"blk.{i}.fc1.weight"], want[f"blk.{i}.fc1.bias"] = (f, d), (f,)
        want[f"blk.{i}.fc2.weight"], want[f"blk.{i}.fc2.bias"] = (d, f), (d,)
    if s.projector == "mlp2x_gelu":
        hid = w["mm0.weight"].shape[0]
        want.update({"mm0.weight": (hid, d), "mm0.bias": (hid,), "mm2.weight": (s.out_dim, hid),
                     "mm2.bias": (s.out_dim,)})
    else:
        want.update({"mm.weight": (s.out_dim, d), "mm.bias": (s.out_dim,)})
    for name, shape in want.items():
        if name not in w:
            raise ConversionError(f"{path}: tensor for {name} is missing (incomplete mmproj)")
        if tuple(w[name].shape) != shape:
            raise ConversionError(f"{path}: {name} has shape {tuple(w[name].shape)}, expected {shape} from the header")


# -- writer (Checkpoint → mmproj) ---------------------------------------------------------------------------------

def hidden_index(layer: int, n_layers: int) -> int:
    """`hidden_states[layer]` as a non-negative index = the number of CLIP blocks it takes (torch_ref's rule)."""
    idx = layer if layer >= 0 else n_layers + 1 + layer
    if not 0 <= idx <= n_layers:
        raise ConversionError(f"vision feature layer {layer} is out of range for {n_layers} CLIP layers")
    return idx


def _np(t: Any) -> np.ndarray:
    return t.detach().float().cpu().numpy() if hasattr(t, "detach") else np.asarray(t, dtype=np.float32)


def write_mmproj(ckpt: Any, path: Path, name: str | None = None) -> Path:
    """Write the vision tower + projector of `ckpt` as an mmproj in the legacy LLaVA-1.5 layout."""
    import gguf

    vc = ckpt.vision_config
    if not ckpt.drop_cls:
        raise ConversionError("llama.cpp's LLaVA graph always drops CLS; a cls_patch checkpoint cannot be exported")
    if getattr(vc, "hidden_act", "quick_gelu") not in ("quick_gelu", "gelu"):
        raise ConversionError(f"CLIP activation {vc.hidden_act!r} cannot be written to an mmproj")
    n_layers = int(vc.num_hidden_layers)
    blocks = hidden_index(ckpt.feature_layer, n_layers)
    s = ckpt.vision_state
    w = gguf.GGUFWriter(str(path), arch="clip", use_temp_file=False)
    w.add_bool("clip.has_text_encoder", False)
    w.add_bool("clip.has_vision_encoder", True)
    w.add_bool("clip.has_llava_projector", True)
    w.add_file_type(1)  # mostly F16, as `convert_image_encoder_to_gguf.py` without --use-f32
    w.add_name(name or Path(str(ckpt.source)).name)
    w.add_description(DESCRIPTION)
    w.add_string("clip.projector_type", "mlp")
    w.add_uint32("clip.vision.image_size", int(vc.image_size))
    w.add_uint32("clip.vision.patch_size", int(vc.patch_size))
    w.add_uint32("clip.vision.embedding_length", int(vc.hidden_size))
    w.add_uint32("clip.vision.feed_forward_length", int(vc.intermediate_size))
    w.add_uint32("clip.vision.projection_dim", int(getattr(vc, "projection_dim", vc.hidden_size)))
    w.add_uint32("clip.vision.attention.head_count", int(vc.num_attention_heads))
    w.add_float32("clip.vision.attention.layer_norm_epsilon", float(vc.layer_norm_eps))
    w.add_uint32("clip.vision.block_count", blocks)
    w.add_array("clip.vision.feature_layer", [blocks])
    w.add_array("clip.vision.image_mean", [float(x) for x in ckpt.preprocess.mean])
    w.add_array("clip.vision.image_std", [float(x) for x in ckpt.preprocess.std])
    w.add_bool("clip.use_gelu", vc.hidden_act == "gelu")
    w.add_string("llava_local.preprocess", ckpt.preprocess.mode)
    w.add_string("llava_local.resample", ckpt.preprocess.resample)

    def f16(arr: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(arr.astype(np.float16))

    def f32(arr: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(arr.astype(np.float32))

    p = ckpt.projector_state
    if ckpt.projector_type == "mlp2x_gelu":
        # The legacy converter adds the projector first: mm.0 = linear_1, mm.2 = linear_2 (index 1 is the GELU).
        for idx, src in ((0, "linear_1"), (2, "linear_2")):
            w.add_tensor(f"mm.{idx}.weight", f16(_np(p[f"{src}.weight"])))
            w.add_tensor(f"mm.{idx}.bias", f32(_np(p[f"{src}.bias"])))
    else:
        w.add_tensor("mm.weight", f16(_np(p["linear.weight"])))
        w.add_tensor("mm.bias", f32(_np(p["linear.bias"])))
    w.add_tensor("v.class_embd", f32(_np(s["embeddings.class_embedding"])))
    w.add_tensor("v.patch_embd.weight", f16(_np(s["embeddings.patch_embedding.weight"])))
    w.add_tensor("v.position_embd.weight", f16(_np(s["embeddings.position_embedding.weight"])))
    w.add_tensor("v.pre_ln.weight", f32(_np(s["pre_layrnorm.weight"])))
    w.add_tensor("v.pre_ln.bias", f32(_np(s["pre_layrnorm.bias"])))
    for i in range(blocks):
        for hf, gg in _HF_BLOCK.items():
            for kind in ("weight", "bias"):
                arr = _np(s[f"encoder.layers.{i}.{hf}.{kind}"])
                w.add_tensor(f"v.blk.{i}.{gg}.{kind}", f16(arr) if arr.ndim == 2 else f32(arr))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
