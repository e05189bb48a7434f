"""Write the training output in "layout c", the format `llava-local convert` takes as is.

Contract: `write_output(out_dir, state_dict, model, cfg, tokenizer, provenance)` (rank 0 only) writes
- `config.json`: transformers `LlavaConfig` (vision_config clip_vision_model, text_config llama,
  vision_feature_layer, vision_feature_select_strategy, image_token_id, projector_hidden_act "gelu");
- `model.safetensors` (or shards + `model.safetensors.index.json` past 5 GB) with llava-hf keys:
  `language_model.model.*`, `language_model.lm_head.weight`, `vision_tower.*`, `multi_modal_projector.*`
  (`linear_1/linear_2` for mlp2x_gelu, `linear` for linear); LoRA adapters are merged first (`merge_lora`);
- the tokenizer files with `<image>`, and a `preprocessor_config.json` for transformers' LlavaProcessor;
- `llava_local.json`: {"format": "llava-local-train", "version": 1, projector_type, preprocess, template,
  context_length, provenance}.
With mlp2x_gelu the directory loads in `LlavaForConditionalGeneration.from_pretrained` unchanged.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from llava_local.preprocess import PreprocessConfig

from .config import TrainConfig

FORMAT = "llava-local-train"
VERSION = 1
MAX_SHARD = "5GB"
_LORA_LEAF = re.compile(r"^(?P<mod>.+)\.lora_(?P<ab>[AB])\.(?P<adapter>[^.]+)\.weight$")


def merge_lora(sd: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """Fold peft LoRA leaves into their base weights: W + scaling · B @ A; drop the adapters.

    Keys `X.base_layer.weight`, `X.lora_A.default.weight` (r, in), `X.lora_B.default.weight` (out, r) become
    `X.weight`; `X.base_layer.bias` becomes `X.bias`. Works on a gathered full state dict, so it needs no peft
    model (FSDP-sharded models merge the same way).
    """
    loras: dict[str, dict[str, torch.Tensor]] = {}
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        m = _LORA_LEAF.match(k)
        if m:
            loras.setdefault(m["mod"], {})[m["ab"]] = v
        elif ".base_layer." in k:
            out[k.replace(".base_layer.", ".")] = v
        else:
            out[k] = v
    for mod, ab in loras.items():
        key = mod + ".weight"
        w = out[key]
        delta = (ab["B"].double() @ ab["A"].double()) * scaling  # (out, r) @ (r, in) → (out, in)
        out[key] = (w.double() + delta).to(w.dtype)
    return out


def _untie(sd: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Contiguous tensors in `dtype`, none sharing storage (safetensors refuses shared storage)."""
    seen: set[int] = set()
    out = {}
    for k, v in sd.items():
        v = v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
        if v.untyped_storage().data_ptr() in seen:
            v = v.clone()
        seen.add(v.untyped_storage().data_ptr())
        out[k] = v
    return out


def save_safetensors(sd: dict[str, torch.Tensor], out_dir: Path) -> list[str]:
    """One file, or shards plus the HF index when larger than MAX_SHARD; returns the file names."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    split = split_torch_state_dict_into_shards(sd, filename_pattern="model{suffix}.safetensors",
                                               max_shard_size=MAX_SHARD)
    for name, keys in split.filename_to_tensors.items():
        save_file({k: sd[k] for k in keys}, str(out_dir / name), metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in sd.values())},
                 "weight_map": split.tensor_to_filename}
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return sorted(split.filename_to_tensors)


def _preprocessor_config(pre: PreprocessConfig, patch_size: int) -> dict[str, Any]:
    resample = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3}[pre.resample]
    return {"image_processor_type": "LlavaImageProcessor", "processor_class": "LlavaProcessor",
            "do_pad": pre.mode == "pad", "do_resize": True, "size": {"shortest_edge": pre.size},
            "do_center_crop": True, "crop_size": {"height": pre.size, "width": pre.size},
            "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(pre.mean),
            "image_std": list(pre.std), "resample": resample, "do_convert_rgb": True, "patch_size": patch_size}


def write_output(out_dir: str | Path, sd: dict[str, torch.Tensor], hf_config: dict[str, Any], cfg: TrainConfig,
                 tokenizer, pre: PreprocessConfig, provenance: dict[str, Any], dtype: torch.dtype) -> Path:
    """Rank 0: the full (gathered) state dict → layout c in `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.lora.enabled and cfg.lora.merge:
        sd = merge_lora(sd, cfg.lora.alpha / cfg.lora.r)
    for stale in list(out.glob("model*.safetensors")) + list(out.glob("model.safetensors.index.json")):
        stale.unlink()
    save_safetensors(_untie(sd, dtype), out)
    hf_config = dict(hf_config, torch_dtype=str(dtype).removeprefix("torch."))
    (out / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    tokenizer.save_pretrained(str(out))
    spm = Path(getattr(tokenizer, "name_or_path", "")) / "tokenizer.model"
    if spm.is_file() and not (out / "tokenizer.model").is_file():
        # The converter prefers SentencePiece's own scores/types for the GGUF vocab; `<image>` stays an added
        # token (tokenizer.json / tokenizer_config.json), exactly as llava-hf ships it.
        shutil.copyfile(spm, out / "tokenizer.model")
    patch = hf_config["vision_config"]["patch_size"]
    (out / "preprocessor_config.json").write_text(json.dumps(_preprocessor_config(pre, patch), indent=2) + "\n")
    meta = {"format": FORMAT, "version": VERSION, "projector_type": cfg.model.projector_type,
            "preprocess": pre.to_dict(), "template": cfg.model.template,
            "context_length": cfg.data.context_length, "provenance": provenance}
    (out / "llava_local.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out
