"""Torch modules rebuilt from a canonical `Checkpoint`: the export source and the parity reference.

- `build_clip(ckpt)`: transformers `CLIPVisionModel` (eager attention) with the checkpoint's weights, loaded
  strictly (a missing or unexpected tensor is a ConversionError, not a silent random init).
- `build_projector(ckpt)`: `Sequential(Linear, GELU, Linear)` (mlp2x_gelu, exact erf GELU as llava-hf's
  ACT2FN["gelu"]) or `Linear`.
- `VisionEncoder(clip, projector, layer, drop_cls)`: pixel_values[B,3,S,S] → image_embeds[B,N,D_llm]. It runs
  only the encoder layers up to the selected one (the rest would be dead weight in the ONNX graph).
- `reference_features(...)`: the tech memo §5 path, `clip(px, output_hidden_states=True).hidden_states[layer]`
  → drop CLS → projector, used to check `VisionEncoder` and the ONNX graph against it.
- `build_llm(ckpt)`: `LlamaForCausalLM` with the checkpoint's LLM weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from llava_local.errors import ConversionError

from .layouts import Checkpoint


def _load_strict(module: nn.Module, state: dict[str, Any], what: str) -> None:
    result = module.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    if missing or result.unexpected_keys:
        raise ConversionError(
            f"{what} weights do not match the config: missing {missing[:4]}, unexpected {result.unexpected_keys[:4]}"
        )


def build_clip(ckpt: Checkpoint) -> nn.Module:
    from transformers import CLIPVisionModel

    cfg = ckpt.vision_config
    cfg._attn_implementation = "eager"  # plain matmul attention exports cleanly to ONNX
    model = CLIPVisionModel(cfg)
    _load_strict(model, ckpt.vision_state, "vision tower")
    return model.float().eval()


def build_projector(ckpt: Checkpoint) -> nn.Module:
    s = ckpt.projector_state
    if ckpt.projector_type == "mlp2x_gelu":
        w1, w2 = s["linear_1.weight"], s["linear_2.weight"]
        proj = nn.Sequential(nn.Linear(w1.shape[1], w1.shape[0]), nn.GELU(), nn.Linear(w2.shape[1], w2.shape[0]))
        proj.load_state_dict({"0.weight": w1, "0.bias": s["linear_1.bias"],
                              "2.weight": w2, "2.bias": s["linear_2.bias"]})
    else:
        w = s["linear.weight"]
        proj = nn.Linear(w.shape[1], w.shape[0])
        proj.load_state_dict({"weight": w, "bias": s["linear.bias"]})
    if proj(torch.zeros(1, ckpt.vision_config.hidden_size)).shape[-1] != ckpt.embed_dim:
        raise ConversionError(f"projector output width does not equal the LLM hidden size {ckpt.embed_dim}")
    return proj.float().eval()


def hidden_index(layer: int, n_layers: int) -> int:
    """`hidden_states[layer]` as a non-negative index (hidden_states has n_layers + 1 entries)."""
    idx = layer if layer >= 0 else n_layers + 1 + layer
    if not 0 <= idx <= n_layers:
        raise ConversionError(f"vision feature layer {layer} is out of range for {n_layers} CLIP layers")
    return idx


class VisionEncoder(nn.Module):
    """CLIP embeddings → pre-LN → the first `k` encoder layers → (drop CLS) → projector."""

    def __init__(self, clip: nn.Module, projector: nn.Module, layer: int, drop_cls: bool) -> None:
        super().__init__()
        self.embeddings = clip.embeddings
        self.pre_layrnorm = clip.pre_layrnorm
        k = hidden_index(layer, len(clip.encoder.layers))
        self.layers = nn.ModuleList(list(clip.encoder.layers)[:k])
        self.projector = projector
        self.drop_cls = drop_cls

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.pre_layrnorm(self.embeddings(pixel_values))  # (B, 1+P, D_vis)
        for layer in self.layers:
            out = layer(x, None)
            x = out[0] if isinstance(out, tuple) else out
        if self.drop_cls:
            x = x[:, 1:]  # (B, P, D_vis)
        return self.projector(x)  # (B, P, D_llm)


def build_vision_encoder(ckpt: Checkpoint) -> tuple[VisionEncoder, nn.Module, nn.Module]:
    """(encoder for export, full CLIP for the reference, projector)."""
    clip, proj = build_clip(ckpt), build_projector(ckpt)
    return VisionEncoder(clip, proj, ckpt.feature_layer, ckpt.drop_cls).eval(), clip, proj


@torch.no_grad()
def reference_features(clip: nn.Module, projector: nn.Module, pixel_values: torch.Tensor, layer: int,
                       drop_cls: bool) -> torch.Tensor:
    """transformers' LLaVA feature path: hidden_states[layer][:, 1:] → projector. (B, N, D_llm) float32."""
    hs = clip(pixel_values, output_hidden_states=True).hidden_states[layer]
    return projector(hs[:, 1:] if drop_cls else hs)


def build_llm(ckpt: Checkpoint) -> nn.Module:
    from transformers import LlamaForCausalLM

    cfg = ckpt.text_config
    cfg._attn_implementation = "eager"
    model = LlamaForCausalLM(cfg)
    state = dict(ckpt.llm_state)
    if "lm_head.weight" not in state and getattr(cfg, "tie_word_embeddings", False):
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    _load_strict(model, state, "language model")
    return model.float().eval()
