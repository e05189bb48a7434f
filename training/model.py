"""LLaVA for training: frozen CLIP vision tower + projector + LLaMA, with the freeze policy of each stage.

Contract:
- `load_tokenizer(dir)` gives the HF tokenizer with `<image>` added (appended after the last piece, as llava-hf).
- `build_model(cfg, tokenizer)` loads the base weights from local HF dirs (nothing is downloaded), grows the
  embedding to the tokenizer (new rows: the mean of the old ones), builds the projector, loads
  `model.init_from` (stage 2: the stage-1 output) and applies the stage's trainable set:
  stage 1 trains only the projector; stage 2 trains projector + LLM, or projector + LoRA adapters (peft).
  The vision tower is frozen in both stages (as LLaVA) and runs under `no_grad`.
- `LlavaForTraining.forward(input_ids, attention_mask, labels, pixel_values)` returns the *sum* of token
  cross-entropies and the number of label tokens, so the trainer can normalise over a whole accumulation
  window and all ranks. Image rows replace the `<image>` placeholders in input_ids (one placeholder per
  image token, as transformers' Llava and as the runtime decodes them).
- Attribute names equal llava-hf's on-disk keys (`vision_tower.*`, `multi_modal_projector.*`,
  `language_model.model.*`, `language_model.lm_head.*`), so the state dict is layout c without renaming.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from llava_local.errors import UsageError
from llava_local.templates import IMAGE_TOKEN

from .config import TrainConfig
from .projector import build_projector, projector_type_of

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


def load_tokenizer(path: str):
    """The HF tokenizer of `path` with `<image>` as a special token (added when missing)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(Path(path).expanduser()))
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot load a tokenizer from {path}: {str(e).splitlines()[0]}") from None
    if IMAGE_TOKEN not in tok.get_vocab():
        tok.add_tokens([IMAGE_TOKEN], special_tokens=True)
    return tok


def tokens_per_image(vision_config, strategy: str) -> int:
    """Patch tokens per image: (S/patch)², plus the CLS token when it is kept."""
    n = (vision_config.image_size // vision_config.patch_size) ** 2
    return n + (1 if strategy == "full" else 0)


def vision_tokens(tower: nn.Module, pixel_values: torch.Tensor, layer: int, strategy: str) -> torch.Tensor:
    """(N, 3, S, S) pixels → (N, T, D_vision): hidden state `layer` of the tower (LLaVA's
    `mm_vision_select_layer`), CLS dropped with the `default` strategy. What the projector reads."""
    dtype = next(tower.parameters()).dtype
    out = tower(pixel_values.to(dtype), output_hidden_states=True)
    h = out.hidden_states[layer]  # (N, 1 + P, D_vision); index 0 is the embeddings
    return h[:, 1:] if strategy == "default" else h


class LlavaForTraining(nn.Module):
    def __init__(self, vision_tower: nn.Module, projector: nn.Module, language_model: nn.Module,
                 image_token_id: int, feature_layer: int, select_strategy: str) -> None:
        super().__init__()
        self.vision_tower = vision_tower
        self.multi_modal_projector = projector
        self.language_model = language_model
        self.image_token_id = image_token_id
        self.feature_layer = feature_layer
        self.select_strategy = select_strategy

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) pixels → (N, T, D_text) projected features."""
        # The tower is frozen in both stages: no graph, no activations kept for it.
        with torch.no_grad():
            h = vision_tokens(self.vision_tower, pixel_values, self.feature_layer, self.select_strategy)
        return self.multi_modal_projector(h)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                pixel_values: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum of next-token cross-entropy over label positions, and their count."""
        lm = self.language_model
        embeds = lm.get_input_embeddings()(input_ids)  # (B, L, D)
        image_mask = input_ids == self.image_token_id  # (B, L)
        if pixel_values is not None and pixel_values.shape[0] > 0:
            feats = self.image_features(pixel_values)  # (N, T, D)
            n_slots, n_rows = int(image_mask.sum()), feats.shape[0] * feats.shape[1]
            assert n_slots == n_rows, f"{n_slots} <image> slots for {n_rows} feature rows"
            embeds = embeds.masked_scatter(image_mask.unsqueeze(-1), feats.to(embeds.dtype))
        else:
            # A micro-batch without images still runs tower and projector on one blank image, so that every
            # rank enters the same FSDP units (their all-gathers are collectives) and the projector gets a
            # (zero) gradient to reduce: LLaVA's dummy-image trick for text-only samples.
            size = self.vision_tower.config.image_size
            blank = torch.zeros(1, 3, size, size, device=embeds.device)
            embeds = embeds + 0.0 * self.image_features(blank).sum().to(embeds.dtype)
        hidden = lm.model(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state  # (B, L, D)
        # Predict token t+1 from position t; compute logits only where a label exists (saves B·L·V floats).
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        h = hidden[:, :-1][keep]  # (n, D)
        logits = lm.lm_head(h).float()  # (n, V)
        loss_sum = nn.functional.cross_entropy(logits, targets[keep], reduction="sum")
        return loss_sum, keep.sum()


def _load_vision_tower(path: str):
    from transformers import CLIPVisionModel

    try:
        return CLIPVisionModel.from_pretrained(str(Path(path).expanduser()), dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise UsageError(f"model.vision_tower: cannot load a CLIP vision model from {path}: "
                         f"{str(e).splitlines()[0]}") from None


def _load_language_model(path: str):
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(str(Path(path).expanduser()), dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise UsageError(f"model.language_model: cannot load a causal LM from {path}: "
                         f"{str(e).splitlines()[0]}") from None


def read_safetensors_dir(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of `model.safetensors` or of a sharded `model.safetensors.index.json` in `path`."""
    import json

    from safetensors.torch import load_file

    d = Path(path).expanduser()
    index = d / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (d / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise UsageError(f"{d} has no model.safetensors; point model.init_from at a `llava-local train` output")
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        sd.update(load_file(str(d / f)))
    return sd


def _load_init_from(model: LlavaForTraining, path: str, projector_type: str) -> None:
    sd = read_safetensors_dir(path)
    found = projector_type_of(set(sd))
    if found != projector_type:
        raise UsageError(f"model.init_from {path} holds a {found or 'no'} projector, but model.projector_type is "
                         f"{projector_type}; use the same projector type as stage 1")
    own = model.state_dict()
    usable = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(usable, strict=False)
    log.info("init_from %s: loaded %d of %d tensors", path, len(usable), len(own))


def inject_lora(model: LlavaForTraining, cfg: TrainConfig) -> None:
    """Add LoRA adapters to the LLM in place (peft), keeping llava-hf key names plus `lora_*` leaves."""
    from peft import LoraConfig, inject_adapter_in_model

    lc = cfg.lora
    config = LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=list(lc.target_modules),
                        bias="none")
    inject_adapter_in_model(config, model.language_model)


def apply_freeze(model: LlavaForTraining, cfg: TrainConfig) -> None:
    """Stage 1: projector only. Stage 2: projector + LLM (or + LoRA adapters). The vision tower never trains."""
    for name, p in model.named_parameters():
        if name.startswith("multi_modal_projector."):
            p.requires_grad_(True)
        elif name.startswith("language_model."):
            if cfg.stage == 1:
                p.requires_grad_(False)
            elif cfg.lora.enabled:
                p.requires_grad_("lora_" in name)
            else:
                p.requires_grad_(True)
        else:
            p.requires_grad_(False)


def build_model(cfg: TrainConfig, tokenizer) -> LlavaForTraining:
    """Base weights from local dirs → LlavaForTraining with the stage's trainable set (fp32 master weights)."""
    vision = _load_vision_tower(cfg.model.vision_tower)
    lm = _load_language_model(cfg.model.language_model)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if len(tokenizer) > lm.get_input_embeddings().weight.shape[0]:
        lm.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    projector = build_projector(cfg.model.projector_type, vision.config.hidden_size, lm.config.hidden_size)
    model = LlavaForTraining(vision, projector, lm, image_token_id, cfg.model.vision_feature_layer,
                             cfg.model.vision_feature_select_strategy)
    n_layers = vision.config.num_hidden_layers
    if not -(n_layers + 1) <= cfg.model.vision_feature_layer <= n_layers:
        raise UsageError(f"model.vision_feature_layer {cfg.model.vision_feature_layer} is outside the vision "
                         f"tower's {n_layers} layers")
    if cfg.model.init_from:
        _load_init_from(model, cfg.model.init_from, cfg.model.projector_type)
    if cfg.lora.enabled:
        inject_lora(model, cfg)
    apply_freeze(model, cfg)
    return model


def count_parameters(model: nn.Module) -> dict[str, dict[str, int]]:
    """Parameters per part: {"vision_tower": {"total": n, "trainable": m}, ...}."""
    out: dict[str, dict[str, int]] = {}
    for name, p in model.named_parameters():
        part = name.split(".")[0]
        entry = out.setdefault(part, {"total": 0, "trainable": 0})
        entry["total"] += p.numel()
        entry["trainable"] += p.numel() if p.requires_grad else 0
    return out


def llava_hf_config(model: LlavaForTraining, cfg: TrainConfig) -> dict:
    """The transformers `LlavaConfig` of the output (layout c `config.json`) as a dict."""
    from transformers import LlavaConfig

    vision_cfg = model.vision_tower.config
    text_cfg = model.language_model.config
    text_cfg.vocab_size = model.language_model.get_input_embeddings().weight.shape[0]
    config = LlavaConfig(
        vision_config=vision_cfg.to_dict(), text_config=text_cfg.to_dict(),
        image_token_index=model.image_token_id,
        image_seq_length=tokens_per_image(vision_cfg, cfg.model.vision_feature_select_strategy),
        projector_hidden_act="gelu",
        vision_feature_select_strategy=cfg.model.vision_feature_select_strategy,
        vision_feature_layer=cfg.model.vision_feature_layer,
        multimodal_projector_bias=True,
        tie_word_embeddings=bool(getattr(text_cfg, "tie_word_embeddings", False)),
    )
    config.architectures = ["LlavaForConditionalGeneration"]
    return config.to_dict()
