"""End-to-end tiny training through the CLI: stage 1 freezes all but the projector, stage 2 learns, the output
loads in transformers and agrees with our forward, resume/restart mistakes are one-line errors, --dry-run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import base_overrides, read_metrics

from llava_local.cli import main
from training.config import load_config
from training.model import build_model, load_tokenizer


def _initial_state(cfg) -> dict[str, torch.Tensor]:
    torch.manual_seed(cfg.train.seed)  # as the trainer does before building
    model = build_model(cfg, load_tokenizer(cfg.tokenizer_dir))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_stage1_changes_only_the_projector(tiny_base, tiny_data, stage1_out):
    cfg = load_config("tiny-stage1", base_overrides(tiny_base, tiny_data[0], stage1_out))
    before = _initial_state(cfg)
    after = load_file(str(stage1_out / "model.safetensors"))
    assert set(after) == set(before)
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed, "stage 1 trained nothing"
    assert all(k.startswith("multi_modal_projector.") for k in changed), sorted(changed)[:5]
    assert {k for k in before if k.startswith("multi_modal_projector.")} == changed
    # And "before" really is the base checkpoint: LLM rows of the original vocabulary and the CLIP tower.
    base_llm = load_file(str(Path(tiny_base.llm_dir) / "model.safetensors"))
    emb = base_llm["model.embed_tokens.weight"]
    assert torch.equal(after["language_model.model.embed_tokens.weight"][: emb.shape[0]], emb)
    assert torch.equal(after["language_model.model.layers.1.mlp.down_proj.weight"],
                       base_llm["model.layers.1.mlp.down_proj.weight"])
    base_clip = load_file(str(Path(tiny_base.clip_dir) / "model.safetensors"))
    clip_key = next(k for k in base_clip if k.endswith("encoder.layers.0.self_attn.q_proj.weight"))
    assert torch.equal(after["vision_tower." + clip_key.removeprefix("vision_model.")], base_clip[clip_key])


def test_layout_c_files(stage1_out):
    meta = json.loads((stage1_out / "llava_local.json").read_text())
    assert meta["format"] == "llava-local-train" and meta["version"] == 1
    assert meta["projector_type"] == "mlp2x_gelu" and meta["template"] == "plain"
    assert meta["preprocess"]["mode"] == "pad" and meta["preprocess"]["size"] == 56
    config = json.loads((stage1_out / "config.json").read_text())
    assert config["model_type"] == "llava" and config["vision_config"]["model_type"] == "clip_vision_model"
    assert config["text_config"]["model_type"] == "llama" and config["vision_feature_layer"] == -2
    assert config["vision_feature_select_strategy"] == "default" and config["projector_hidden_act"] == "gelu"
    tok = load_tokenizer(str(stage1_out))
    assert tok.convert_tokens_to_ids("<image>") == config["image_token_index"]
    assert (stage1_out / "tokenizer.model").is_file()
    keys = load_file(str(stage1_out / "model.safetensors")).keys()
    assert "language_model.lm_head.weight" in keys and "multi_modal_projector.linear_2.weight" in keys
    assert any(k.startswith("language_model.model.layers.") for k in keys)
    ckpts = sorted((stage1_out / "checkpoints").glob("step-*"))
    assert ckpts and all((c / "COMPLETE").is_file() for c in ckpts)


def test_stage2_loss_falls(stage2_out):
    m = read_metrics(stage2_out)
    losses = [m[s]["loss"] for s in sorted(m)]
    assert len(losses) == 8
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3, losses
    assert all(m[s]["label_tokens"] > 0 and m[s]["tokens_per_s"] > 0 for s in m)


def test_output_loads_in_transformers_and_matches_our_loss(stage2_out, tiny_base, tiny_data):
    from transformers import LlavaForConditionalGeneration

    from llava_local.preprocess import PreprocessConfig
    from llava_local.templates import get_template
    from training.dataset import LlavaDataset, collate

    hf = LlavaForConditionalGeneration.from_pretrained(str(stage2_out), dtype=torch.float32).eval()
    cfg = load_config("tiny-stage2", base_overrides(tiny_base, tiny_data[1], stage2_out / "x") +
                      [f"model.init_from={stage2_out}"])
    tok = load_tokenizer(str(stage2_out))
    ours = build_model(cfg, tok).eval()
    records = json.loads(tiny_data[1].read_text())
    ds = LlavaDataset(records[:2], tiny_data[1].parent, tok, get_template("vicuna_v1"), PreprocessConfig(size=56),
                      16, 256)
    b = collate([ds[0], ds[1]], pad_id=0)
    with torch.no_grad():
        loss_sum, n = ours(b["input_ids"], b["attention_mask"], b["labels"], b["pixel_values"])
        out = hf(input_ids=b["input_ids"], attention_mask=b["attention_mask"], pixel_values=b["pixel_values"],
                 labels=b["labels"])
    assert float(out.loss) == pytest.approx(float(loss_sum / n), abs=1e-5)
    assert float(out.loss) < 1.0  # trained: the answers are well predicted


def test_resume_without_checkpoint_and_restart_over_checkpoints_are_errors(tiny_base, tiny_data, stage1_out,
                                                                           tmp_path, capsys):
    args = ["train", "tiny-stage1", *base_overrides(tiny_base, tiny_data[0], tmp_path / "r")]
    assert main([*args, "--resume"]) == 2
    assert "no complete checkpoint" in capsys.readouterr().err
    args = ["train", "tiny-stage1", *base_overrides(tiny_base, tiny_data[0], stage1_out)]
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err


def test_dry_run_prints_trainable_parameters_and_memory(tiny_base, tiny_data, tmp_path, capsys):
    rc = main(["train", "tiny-stage2", *base_overrides(tiny_base, tiny_data[1], tmp_path / "d"),
               f"model.init_from={tmp_path}", "--dry-run"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "multi_modal_projector" in out and "vision_tower" in out and "memory per GPU" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("vision_tower"))
    assert line.split()[-1] == "0"  # frozen
    assert not (tmp_path / "d").exists()


def test_bf16_on_cpu_trains_and_keeps_fp32_files(tiny_base, tiny_data, tmp_path):
    """`train.precision: bf16` on a CPU autocasts the step; the checkpoint keeps fp32 master weights (a bf16 file
    is for GPU runs), and its provenance says how it was trained."""
    out = tmp_path / "bf16"
    rc = main(["train", "tiny-stage1", *base_overrides(tiny_base, tiny_data[0], out), "train.precision=bf16",
               "optim.max_steps=2"])
    assert rc == 0
    weights = load_file(str(out / "model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.float32}
    meta = json.loads((out / "llava_local.json").read_text())
    assert meta["provenance"]["precision"] == "bf16"
    assert all(m["loss"] > 0 for m in read_metrics(out).values())
