"""Unit checks of the pieces the end-to-end runs rely on: LoRA merge math against peft's own, projector key
names (llava-hf's), and the warmup + cosine schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from training.export import merge_lora
from training.projector import build_projector, projector_type_of
from training.trainer import warmup_then_decay


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(16, 16, bias=False)
        self.up_proj = nn.Linear(16, 24)
        self.norm = nn.LayerNorm(24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.up_proj(self.q_proj(x)))


def test_merge_lora_equals_peft_forward():
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(0)
    plain = _Block()
    adapted = _Block()
    adapted.load_state_dict(plain.state_dict())
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=12, target_modules=["q_proj", "up_proj"], lora_dropout=0.0),
                            adapted)
    for name, p in adapted.named_parameters():
        if "lora_B" in name:  # peft initialises B to zero; make the delta non-trivial
            nn.init.normal_(p, std=0.5)
    merged = merge_lora(adapted.state_dict(), scaling=12 / 4)
    assert set(merged) == set(plain.state_dict())
    plain.load_state_dict(merged)
    x = torch.randn(3, 16)
    with torch.no_grad():
        assert torch.allclose(plain(x), adapted(x), atol=1e-5)


@pytest.mark.parametrize("kind, keys", [("linear", {"linear.weight", "linear.bias"}),
                                        ("mlp2x_gelu", {"linear_1.weight", "linear_1.bias",
                                                        "linear_2.weight", "linear_2.bias"})])
def test_projector_keys_are_llava_hf(kind, keys):
    proj = build_projector(kind, 8, 12)
    assert set(proj.state_dict()) == keys
    assert proj(torch.zeros(2, 5, 8)).shape == (2, 5, 12)
    assert projector_type_of({f"multi_modal_projector.{k}" for k in keys}) == kind
    assert projector_type_of({"language_model.lm_head.weight"}) is None


def test_mlp2x_gelu_matches_transformers_projector():
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    cfg = LlavaConfig(vision_config=CLIPVisionConfig(hidden_size=8, num_attention_heads=2),
                      text_config=LlamaConfig(hidden_size=12, num_attention_heads=2))
    theirs = LlavaMultiModalProjector(cfg)
    ours = build_projector("mlp2x_gelu", 8, 12)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 3, 8)
    assert torch.allclose(ours(x), theirs(x))


def test_warmup_then_cosine_to_zero():
    f = warmup_then_decay(total=100, warmup=10)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.5)
    assert f(100) == pytest.approx(0.0, abs=1e-12)
    assert all(f(s) >= f(s + 1) for s in range(10, 100))
    assert f(30) == pytest.approx(0.5 * (1 + math.cos(math.pi * 20 / 90)))


def test_constant_schedule_holds_the_rate_after_warmup():
    f = warmup_then_decay(total=100, warmup=10, schedule="constant")
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert [f(s) for s in (10, 55, 99, 100)] == [1.0] * 4


def test_wsd_schedule_holds_then_decays_linearly_over_the_last_share():
    f = warmup_then_decay(total=100, warmup=10, schedule="wsd", decay_ratio=0.2)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert [f(s) for s in (10, 50, 80)] == [1.0] * 3  # stable until the last 20 steps
    assert f(90) == pytest.approx(0.5) and f(99) == pytest.approx(0.05)  # linear; the last step still trains
    assert all(f(s) >= f(s + 1) for s in range(10, 99))
