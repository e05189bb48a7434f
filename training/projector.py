"""The multimodal projector: CLIP patch features → LLM embedding rows.

Contract: `build_projector(kind, vision_dim, text_dim)` returns an `nn.Module` mapping (N, T, vision_dim) to
(N, T, text_dim). Parameter names are llava-hf's, so a state dict saved under `multi_modal_projector.` is what
`llava-local convert` and transformers' `LlavaForConditionalGeneration` read:
- `linear` (LLaVA v1): one `nn.Linear`, keys `linear.{weight,bias}`.
- `mlp2x_gelu` (LLaVA-1.5): Linear, GELU (exact erf, as `nn.GELU()` in LLaVA), Linear, keys
  `linear_1.*` / `linear_2.*` (LLaVA's own checkpoints call them `mm_projector.0` / `.2`).
The converters import this module to rebuild the projector for ONNX export.
"""

from __future__ import annotations

import torch
from torch import nn

PROJECTOR_TYPES = ("linear", "mlp2x_gelu")


class LinearProjector(nn.Module):
    """LLaVA v1: a single linear map."""

    def __init__(self, vision_dim: int, text_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(vision_dim, text_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, T, Dv) -> (N, T, Dt)
        return self.linear(x)


class MlpGeluProjector(nn.Module):
    """LLaVA-1.5 `mlp2x_gelu`; identical to transformers' `LlavaMultiModalProjector` with gelu."""

    def __init__(self, vision_dim: int, text_dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(vision_dim, text_dim)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(text_dim, text_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, T, Dv) -> (N, T, Dt)
        return self.linear_2(self.act(self.linear_1(x)))


_CLASSES = {"linear": LinearProjector, "mlp2x_gelu": MlpGeluProjector}


def build_projector(kind: str, vision_dim: int, text_dim: int) -> nn.Module:
    """A freshly initialised projector (nn.Linear's default init, as LLaVA's builder)."""
    if kind not in _CLASSES:
        raise ValueError(f"unknown projector type {kind!r}; use one of {', '.join(PROJECTOR_TYPES)}")
    return _CLASSES[kind](vision_dim, text_dim)


def projector_type_of(keys: list[str] | set[str], prefix: str = "multi_modal_projector.") -> str | None:
    """Which projector a state dict holds, from its key names (None when it holds none)."""
    names = {k[len(prefix):] for k in keys if k.startswith(prefix)}
    if "linear_1.weight" in names and "linear_2.weight" in names:
        return "mlp2x_gelu"
    if "linear.weight" in names:
        return "linear"
    return None
