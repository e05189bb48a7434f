"""Detect and load the three checkpoint layouts into one canonical in-memory `Checkpoint`.

Layouts (tech memo §5; the training output format is "layout c"):
- "llava-hf": transformers' `LlavaForConditionalGeneration` directory (`config.json` with `text_config` +
  `vision_config`; keys `language_model.model.*`, `language_model.lm_head.*`, `vision_tower.[vision_model.]*`,
  `multi_modal_projector.linear_1/2.*`; the 5.x in-memory spelling `model.language_model.*` is accepted too).
- "original": haotian-liu/LLaVA's `LlavaLlamaForCausalLM` (`mm_vision_tower` in config.json; keys `model.*`,
  `lm_head.*`, `model.mm_projector.0/2.*` or `model.mm_projector.*` for linear). The CLIP tower lives in a
  separate directory named by `mm_vision_tower`, overridable with `--vision-tower`.
- "llava-local": our training output: llava-hf keys plus `llava_local.json` (projector type, preprocessing,
  template, context length, provenance). Detected by that file.

Canonical names: the LLM as `LlamaForCausalLM` keys (`model.*`, `lm_head.weight`), the vision tower as
`CLIPVisionModel` keys (`embeddings.*`, `pre_layrnorm.*`, `encoder.layers.N.*`, `post_layernorm.*`), the
projector as `linear_1.*`/`linear_2.*` (mlp2x_gelu) or `linear.*`. `map_key` is the single table-driven
mapping; every source tensor is mapped or deliberately skipped, anything else is a ConversionError.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from llava_local.errors import ConversionError
from llava_local.preprocess import CLIP_MEAN, CLIP_STD, RESAMPLING, PreprocessConfig

Layout = Literal["llava-hf", "original", "llava-local"]
Part = Literal["llm", "vision", "projector"]

# (source prefix, part, canonical prefix), first match wins, so longer prefixes come first.
HF_PREFIXES: tuple[tuple[str, Part, str], ...] = (
    ("model.language_model.", "llm", "model."),
    ("language_model.model.", "llm", "model."),
    ("language_model.lm_head.", "llm", "lm_head."),
    ("lm_head.", "llm", "lm_head."),
    ("model.vision_tower.vision_model.", "vision", ""),
    ("vision_tower.vision_model.", "vision", ""),
    ("model.vision_tower.", "vision", ""),
    ("vision_tower.", "vision", ""),
    ("model.multi_modal_projector.", "projector", ""),
    ("multi_modal_projector.", "projector", ""),
)
ORIGINAL_PREFIXES: tuple[tuple[str, Part, str], ...] = (
    ("model.mm_projector.0.", "projector", "linear_1."),
    ("model.mm_projector.2.", "projector", "linear_2."),
    ("model.mm_projector.", "projector", "linear."),
    ("model.vision_tower.vision_tower.vision_model.", "vision", ""),
    ("model.", "llm", "model."),
    ("lm_head.", "llm", "lm_head."),
)
# Buffers and unused heads that carry no weights we need (regex on the source name).
SKIP_PATTERNS: tuple[str, ...] = (
    r"(^|\.)rotary_emb\.inv_freq$",  # recomputed from rope_theta
    r"(^|\.)embeddings\.position_ids$",  # CLIP buffer in older checkpoints
)
PROJECTOR_KEYS = {
    "mlp2x_gelu": ("linear_1.weight", "linear_1.bias", "linear_2.weight", "linear_2.bias"),
    "linear": ("linear.weight", "linear.bias"),
}


@dataclass
class Checkpoint:
    """Everything the exporters need, whatever the source layout. Tensors are torch float tensors."""

    layout: Layout
    source: Path
    vision_config: Any  # transformers CLIPVisionConfig
    vision_state: dict[str, Any]
    projector_type: str
    projector_state: dict[str, Any]
    text_config: Any  # transformers LlamaConfig
    llm_state: dict[str, Any]
    tokenizer_dir: Path
    preprocess: PreprocessConfig
    template: str
    feature_layer: int  # index into CLIP hidden_states (negative counts from the end)
    drop_cls: bool
    context_length: int
    image_token_id: int | None = None
    vision_source: Path | None = None
    skipped: list[str] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_image(self) -> int:
        n = (self.vision_config.image_size // self.vision_config.patch_size) ** 2
        return n if self.drop_cls else n + 1

    @property
    def embed_dim(self) -> int:
        return int(self.text_config.hidden_size)


def map_key(name: str, layout: Layout) -> tuple[Part, str] | None:
    """Map a source tensor name to (part, canonical name); None when it is deliberately skipped."""
    if any(re.search(p, name) for p in SKIP_PATTERNS):
        return None
    table = ORIGINAL_PREFIXES if layout == "original" else HF_PREFIXES
    for prefix, part, canon in table:
        if name.startswith(prefix):
            return part, canon + name[len(prefix):]
    raise ConversionError(f"unexpected tensor {name!r} in a {layout} checkpoint; is this a LLaVA checkpoint?")


def detect_layout(src: Path) -> Layout:
    """Which layout `src` holds; ConversionError with a fix-it message when none."""
    if not src.exists():
        raise ConversionError(f"checkpoint not found: {src}")
    if not src.is_dir():
        raise ConversionError(f"{src} is not a directory; pass a checkpoint directory (with config.json)")
    if (src / "llava_local.json").is_file():
        return "llava-local"
    cfg_path = src / "config.json"
    if not cfg_path.is_file():
        raise ConversionError(f"{src} is not a checkpoint: no config.json (expected a LLaVA checkpoint directory)")
    cfg = _read_json(cfg_path)
    if "mm_vision_tower" in cfg or "LlavaLlamaForCausalLM" in cfg.get("architectures", []):
        return "original"
    if "text_config" in cfg and "vision_config" in cfg:
        return "llava-hf"
    raise ConversionError(
        f"{src}: config.json is neither llava-hf (text_config + vision_config) nor original LLaVA "
        "(mm_vision_tower); only LLaVA checkpoints can be converted"
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: expected a JSON object")
    return data


def load_weights(src: Path) -> dict[str, Any]:
    """All tensors of a directory: (sharded) safetensors or (sharded) pytorch_model.bin, as float32."""
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        index = src / index_name
        if index.is_file():
            weight_map = _read_json(index).get("weight_map", {})
            if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
                raise ConversionError(f"{index}: weight_map must map tensor names to file names")
            files = sorted(set(weight_map.values()))
            break
        if (src / single).is_file():
            files = [single]
            break
    else:
        raise ConversionError(f"{src}: no weights (model.safetensors or pytorch_model.bin, or their index)")
    state: dict[str, Any] = {}
    for fname in files:
        path = src / fname
        if not path.is_file():
            raise ConversionError(f"{src}: weight shard {fname} listed in the index is missing")
        state.update(_read_weights(path))
    return {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}


def _read_weights(path: Path) -> dict[str, Any]:
    """One weight file; a damaged or foreign file is a ConversionError naming it, not a library traceback."""
    import pickle

    import torch

    if path.name.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise ConversionError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0]}); "
                                  "re-download or re-export it") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, OSError, RuntimeError, ValueError) as e:
        # weights_only=True refuses pickled code too: that is also "not a weights file we will read".
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConversionError(f"{path}: not a readable PyTorch weights file ({first}); re-download or re-export "
                              "it, or use safetensors") from None


def split_state(state: dict[str, Any], layout: Layout) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Distribute source tensors over llm / vision / projector; returns (parts, skipped source names)."""
    parts: dict[str, dict[str, Any]] = {"llm": {}, "vision": {}, "projector": {}}
    skipped = []
    for name, tensor in state.items():
        mapped = map_key(name, layout)
        if mapped is None:
            skipped.append(name)
            continue
        part, canon = mapped
        parts[part][canon] = tensor
    return parts, skipped


def _projector_type(proj: dict[str, Any], declared: str | None, src: Path) -> str:
    found = "mlp2x_gelu" if "linear_1.weight" in proj else "linear" if "linear.weight" in proj else None
    if found is None:
        raise ConversionError(f"{src}: no projector weights found (mm_projector / multi_modal_projector)")
    if declared and declared != found:
        raise ConversionError(f"{src}: config says projector {declared!r} but the weights are {found!r}")
    missing = [k for k in PROJECTOR_KEYS[found] if k not in proj]
    extra = [k for k in proj if k not in PROJECTOR_KEYS[found]]
    if missing or extra:
        raise ConversionError(f"{src}: projector {found} has missing {missing} / unexpected {extra} tensors")
    return found


def _hf_preprocess(src: Path, size: int) -> PreprocessConfig:
    """llava-hf: `preprocessor_config.json` when present (do_pad → pad, else crop); default pad."""
    path = src / "preprocessor_config.json"
    if not path.is_file():
        return PreprocessConfig(mode="pad", size=size)
    cfg = _read_json(path)
    crop = cfg.get("crop_size") or {}
    size = int(crop.get("height", size)) if isinstance(crop, dict) else int(crop)
    resample = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}.get(cfg.get("resample", 3), "bicubic")
    return PreprocessConfig(
        mode="pad" if cfg.get("do_pad", False) else "crop", size=size,
        mean=tuple(cfg.get("image_mean", CLIP_MEAN)), std=tuple(cfg.get("image_std", CLIP_STD)),
        resample=resample if resample in RESAMPLING else "bicubic",
    )


def _context_length(text_config: Any, fallback: int | None = None) -> int:
    return int(fallback or getattr(text_config, "max_position_embeddings", 2048) or 2048)


def load_checkpoint(
    src: str | Path, *, vision_tower: str | Path | None = None, template: str | None = None
) -> Checkpoint:
    """Detect the layout of `src` and load it into a `Checkpoint` (tensors as float32)."""
    src = Path(src).expanduser()
    layout = detect_layout(src)
    if layout == "original":
        ckpt = _load_original(src, vision_tower)
    else:
        ckpt = _load_hf(src, layout)
    if template is not None:
        ckpt.template = template
    _check_template(ckpt.template)
    if not ((src / "tokenizer.model").is_file() or (src / "tokenizer.json").is_file()):
        raise ConversionError(f"{src}: no tokenizer (tokenizer.model or tokenizer.json) next to the weights")
    return ckpt


def _check_template(name: str) -> None:
    from llava_local.templates import TEMPLATES

    if name not in TEMPLATES:
        raise ConversionError(f"unknown chat template {name!r}; use --template with one of {sorted(TEMPLATES)}")


def _load_hf(src: Path, layout: Layout) -> Checkpoint:
    from transformers import LlavaConfig

    try:
        config = LlavaConfig.from_pretrained(src)
    except Exception as e:  # transformers raises many types for a bad config
        raise ConversionError(f"{src}: cannot read config.json as a LlavaConfig ({e})") from None
    if getattr(config.text_config, "model_type", "llama") != "llama":
        raise ConversionError(f"{src}: only LLaMA language models are supported, not {config.text_config.model_type}")
    parts, skipped = split_state(load_weights(src), layout)
    extra: dict[str, Any] = _read_json(src / "llava_local.json") if layout == "llava-local" else {}
    declared = extra.get("projector_type") or "mlp2x_gelu"
    size = int(config.vision_config.image_size)
    if layout == "llava-local":
        try:
            preprocess = PreprocessConfig.from_dict(extra["preprocess"])
        except (KeyError, TypeError, ValueError) as e:
            raise ConversionError(f"{src}/llava_local.json: bad or missing 'preprocess' ({e})") from None
        template = str(extra.get("template", "vicuna_v1"))
        context = _context_length(config.text_config, extra.get("context_length"))
        provenance = {"training": extra.get("provenance", {})}
    else:
        preprocess, template, context, provenance = _hf_preprocess(src, size), "vicuna_v1", None, {}
        context = _context_length(config.text_config)
    act = getattr(config, "projector_hidden_act", "gelu")
    if act != "gelu":
        raise ConversionError(f"{src}: projector activation {act!r} is not supported (only gelu)")
    strategy = getattr(config, "vision_feature_select_strategy", "default")
    layer = config.vision_feature_layer
    if not isinstance(layer, int):
        raise ConversionError(f"{src}: multi-layer vision features ({layer}) are not supported")
    return Checkpoint(
        layout=layout, source=src, vision_config=config.vision_config, vision_state=parts["vision"],
        projector_type=_projector_type(parts["projector"], declared, src), projector_state=parts["projector"],
        text_config=config.text_config, llm_state=parts["llm"], tokenizer_dir=src, preprocess=preprocess,
        template=template, feature_layer=layer, drop_cls=strategy == "default", context_length=context,
        image_token_id=getattr(config, "image_token_id", None), skipped=skipped, provenance=provenance,
    )


def _load_original(src: Path, vision_tower: str | Path | None) -> Checkpoint:
    from transformers import CLIPVisionConfig, LlamaConfig

    cfg = _read_json(src / "config.json")
    tower = Path(vision_tower).expanduser() if vision_tower else Path(str(cfg.get("mm_vision_tower", "")))
    if not vision_tower and not tower.is_absolute():
        # A relative mm_vision_tower is taken relative to the checkpoint; a hub id cannot be fetched offline.
        tower = src / tower
    if not (tower / "config.json").is_file():
        raise ConversionError(
            f"CLIP vision tower not found at {tower} (from mm_vision_tower={cfg.get('mm_vision_tower')!r}); "
            "pass its local directory with --vision-tower DIR"
        )
    text_cfg = {k: v for k, v in cfg.items() if not k.startswith("mm_")}
    text_cfg.pop("architectures", None)
    text_cfg["model_type"] = "llama"
    try:
        text_config = LlamaConfig.from_dict(text_cfg)
        vision_config = CLIPVisionConfig.from_pretrained(tower)
    except Exception as e:  # transformers raises many types for a bad config
        raise ConversionError(f"{src}: cannot read the LLaMA / CLIP configs ({e})") from None
    parts, skipped = split_state(load_weights(src), "original")
    vision_state = parts["vision"] or _load_clip_dir(tower)
    select = cfg.get("mm_vision_select_feature", "patch")
    if select not in ("patch", "cls_patch"):
        raise ConversionError(f"{src}: mm_vision_select_feature {select!r} is not supported (patch or cls_patch)")
    if cfg.get("mm_use_im_start_end") or cfg.get("mm_patch_merge_type", "flat") != "flat":
        raise ConversionError(f"{src}: im_start/im_end tokens and non-flat patch merging (LLaVA-1.6) are not supported")
    size = int(vision_config.image_size)
    mode = "pad" if cfg.get("image_aspect_ratio") == "pad" else "crop"
    clip_pp = _read_json(tower / "preprocessor_config.json") if (tower / "preprocessor_config.json").is_file() else {}
    mean, std = tuple(clip_pp.get("image_mean", CLIP_MEAN)), tuple(clip_pp.get("image_std", CLIP_STD))
    return Checkpoint(
        layout="original", source=src, vision_config=vision_config, vision_state=vision_state,
        projector_type=_projector_type(parts["projector"], cfg.get("mm_projector_type", "linear"), src),
        projector_state=parts["projector"], text_config=text_config, llm_state=parts["llm"], tokenizer_dir=src,
        preprocess=PreprocessConfig(mode=mode, size=size, mean=mean, std=std), template="vicuna_v1",
        feature_layer=int(cfg.get("mm_vision_select_layer", -2)), drop_cls=select == "patch",
        context_length=int(cfg.get("tokenizer_model_max_length") or _context_length(text_config)),
        vision_source=tower, skipped=skipped,
    )


def _load_clip_dir(tower: Path) -> dict[str, Any]:
    """CLIP vision weights from a CLIPVisionModel or full CLIPModel directory, as CLIPVisionModel keys."""
    state = load_weights(tower)
    out = {}
    for k, v in state.items():
        if any(re.search(p, k) for p in SKIP_PATTERNS):
            continue
        if k.startswith("vision_model."):
            out[k[len("vision_model."):]] = v
        elif k.startswith(("text_model.", "visual_projection", "text_projection", "logit_scale")):
            continue  # the text half of a full CLIPModel
        else:
            out[k] = v
    return out
