"""`--dry-run` on real LLaVA-1.5-7B shapes (config.json only, built on the meta device): trainable parameters per
stage and a memory estimate; the LoRA preset must fit one 24 GB GPU, full stage 2 must not."""

from __future__ import annotations

import re

import pytest

from llava_local.cli import main


@pytest.fixture(scope="module")
def shapes_7b(tmp_path_factory):
    from transformers import CLIPVisionConfig, LlamaConfig

    root = tmp_path_factory.mktemp("shapes7b")
    LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096).save_pretrained(root / "llm")
    CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                     image_size=336, patch_size=14, projection_dim=768).save_pretrained(root / "clip")
    return [f"model.vision_tower={root / 'clip'}", f"model.language_model={root / 'llm'}"]


def _report(preset: str, overrides: list[str], capsys) -> tuple[str, dict[str, int], float]:
    assert main(["train", preset, *overrides, "--dry-run"]) == 0
    out = capsys.readouterr().out
    trainable = {ln.split()[0]: int(ln.split()[-1].replace(",", "")) for ln in out.splitlines()
                 if ln.split() and ln.split()[0] in ("vision_tower", "multi_modal_projector", "language_model")}
    one_gpu = float(re.search(r"bf16, 1 GPU: ~([\d.]+) GiB", out).group(1))
    return out, trainable, one_gpu


def test_dry_run_stages_on_7b_shapes(shapes_7b, capsys):
    _, s1, mem1 = _report("llava-1.5-stage1", shapes_7b, capsys)
    assert s1["vision_tower"] == 0 and s1["language_model"] == 0
    assert s1["multi_modal_projector"] == 1024 * 4096 + 4096 + 4096 * 4096 + 4096  # mlp2x_gelu, 21M
    _, s2, mem2 = _report("llava-1.5-stage2", shapes_7b, capsys)
    assert s2["vision_tower"] == 0 and s2["language_model"] > 6.7e9
    _, lora, mem_lora = _report("llava-1.5-lora-7b", shapes_7b, capsys)
    assert 0 < lora["language_model"] < 0.06 * s2["language_model"]
    assert mem_lora < 22.0 < mem2, (mem_lora, mem2)  # LoRA fits a 24 GB card with headroom; full FT does not
