"""Training config: every preset validates; overrides, type coercion and errors are one-line UsageErrors."""

from __future__ import annotations

from pathlib import Path

import pytest

from llava_local.cli import main
from llava_local.errors import UsageError
from training.config import PRESET_DIR, load_config

PRESETS = sorted(PRESET_DIR.glob("*.yaml"))


def test_the_required_presets_exist():
    names = {p.stem for p in PRESETS}
    assert {"llava-v1-stage1", "llava-v1-stage2", "llava-1.5-stage1", "llava-1.5-stage2", "llava-1.5-lora-7b",
            "tiny-stage1", "tiny-stage2"} <= names


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_every_preset_validates(preset: Path):
    cfg = load_config(str(preset))
    assert cfg.stage in (1, 2)
    assert cfg.optim.global_batch_size % cfg.optim.micro_batch_size == 0
    if cfg.stage == 1:
        assert cfg.model.template == "plain" and not cfg.lora.enabled
    else:
        assert cfg.model.init_from, "stage 2 starts from a stage-1 output"


def test_paper_hyperparameters():
    v1s1, v1s2 = load_config("llava-v1-stage1"), load_config("llava-v1-stage2")
    assert (v1s1.optim.lr, v1s1.optim.global_batch_size, v1s1.optim.epochs) == (2e-3, 128, 1)
    assert (v1s2.optim.lr, v1s2.optim.global_batch_size, v1s2.optim.epochs) == (2e-5, 32, 3)
    assert v1s1.model.projector_type == "linear" and v1s1.data.preprocess_mode == "crop"
    s1, s2 = load_config("llava-1.5-stage1"), load_config("llava-1.5-stage2")
    assert s1.model.projector_type == s2.model.projector_type == "mlp2x_gelu"
    assert s1.data.preprocess_mode == "pad" and s2.model.template == "vicuna_v1"
    lora = load_config("llava-1.5-lora-7b")
    assert lora.lora.enabled and lora.lora.merge and lora.train.precision == "bf16"


def test_overrides_are_typed():
    cfg = load_config("tiny-stage2", ["optim.lr=2e-5", "train.activation_checkpointing=false",
                                      "lora.target_modules=q_proj,v_proj", "data.context_length=64"])
    assert cfg.optim.lr == 2e-5 and cfg.train.activation_checkpointing is False
    assert cfg.lora.target_modules == ("q_proj", "v_proj") and cfg.data.context_length == 64


@pytest.mark.parametrize("override, words", [
    ("optim.lrr=1", "unknown config key 'optim.lrr'"),
    ("optim.lr=fast", "optim.lr must be float"),
    ("model.projector_type=conv", "model.projector_type must be one of"),
    ("optim.schedule=linear", "optim.schedule must be one of cosine, constant, wsd"),
    ("optim.decay_ratio=0", "optim.decay_ratio must be in (0, 1]"),
    ("optim.micro_batch_size=3", "multiple of optim.micro_batch_size"),
    ("lora.enabled=true", "LoRA is for stage 2"),
    ("noequals", "must look like key=value"),
])
def test_bad_values_raise_usage_errors(override, words):
    with pytest.raises(UsageError, match=words.replace("(", r"\(").replace(")", r"\)")):
        load_config("tiny-stage1", [override])


def test_cli_reports_config_mistakes_in_one_line(capsys):
    assert main(["train", "tiny-stage1", "optim.lr=-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("llava-local: error:") and "\n" not in err and "Traceback" not in err
    assert main(["train", "no-such-preset"]) == 2
    assert "preset" in capsys.readouterr().err


def test_missing_paths_are_named(tmp_path, capsys):
    rc = main(["train", "tiny-stage1", f"model.vision_tower={tmp_path}/nope", f"train.out_dir={tmp_path}/o"])
    assert rc == 2
    assert "model.vision_tower" in capsys.readouterr().err
