"""Early stop on a probe: the trainer exports the model at each probe step, asks the probe, and ends there when it
says the skill is learned; with a probe that never says so, the run goes to `optim.max_steps` as without one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file
from train_fixtures import base_overrides, read_metrics

from llava_local.errors import UsageError
from training.config import load_config
from training.trainer import probe_due, run_training


@pytest.mark.parametrize(("every", "after", "total", "want"), [
    (0, 0, 10, []),  # no probing
    (3, 0, 10, [3, 6, 9]),
    (2, 5, 10, [5, 7, 9]),  # the first probe at `after`, never at the last step (the run ends there anyway)
    (4, 8, 8, []),
])
def test_probe_steps(every, after, total, want):
    cfg = load_config("tiny-stage2", [f"train.probe_every={every}", f"train.probe_after={after}"])
    assert [d for d in range(1, total + 1) if probe_due(cfg, d, total)] == want


def test_negative_probe_settings_are_refused():
    with pytest.raises(UsageError, match="probe_every"):
        load_config("tiny-stage2", ["train.probe_every=-1"])
    with pytest.raises(UsageError, match="warmup_steps"):
        load_config("tiny-stage2", ["optim.warmup_steps=-2"])


def _cfg(tiny_base, tiny_data, stage1_out, out: Path, *extra: str):
    return load_config("tiny-stage2", [*base_overrides(tiny_base, tiny_data[1], out),
                                       f"model.init_from={stage1_out}", "optim.max_steps=8", "optim.lr=5e-3",
                                       "train.checkpoint_every=0", *extra])


def test_a_probe_that_says_learned_ends_the_run_at_that_step(tiny_base, tiny_data, stage1_out, tmp_path):
    seen = []

    def probe(out_dir: Path, step: int) -> bool:
        # the model the probe reads is this step's, exported in full
        weights = load_file(out_dir / "model.safetensors")
        seen.append((step, sum(float(t.double().sum()) for t in weights.values())))
        return step >= 4

    cfg = _cfg(tiny_base, tiny_data, stage1_out, tmp_path / "early", "train.probe_every=2")
    out = run_training(cfg, probe=probe)
    assert [s for s, _ in seen] == [2, 4]
    assert seen[0][1] != seen[1][1], "each probe reads the model of its own step"
    assert sorted(read_metrics(out)) == [1, 2, 3, 4]
    meta = json.loads((out / "llava_local.json").read_text())
    assert meta["provenance"]["steps"] == 4
    final = load_file(out / "model.safetensors")
    assert sum(float(t.double().sum()) for t in final.values()) == seen[-1][1]

    # the same run without a probe: the first four steps agree, and it goes on to max_steps
    full = run_training(_cfg(tiny_base, tiny_data, stage1_out, tmp_path / "full"))
    got, want = read_metrics(out), read_metrics(full)
    assert sorted(want) == list(range(1, 9))
    for s in (1, 2, 3, 4):
        assert got[s]["loss"] == pytest.approx(want[s]["loss"], abs=1e-6)


def test_a_probe_that_never_says_learned_runs_to_the_cap(tiny_base, tiny_data, stage1_out, tmp_path):
    steps = []
    cfg = _cfg(tiny_base, tiny_data, stage1_out, tmp_path / "cap", "train.probe_every=3", "train.probe_after=2")
    out = run_training(cfg, probe=lambda _, step: steps.append(step) or False)
    assert steps == [2, 5]
    assert sorted(read_metrics(out)) == list(range(1, 9))
    assert json.loads((out / "llava_local.json").read_text())["provenance"]["steps"] == 8


def test_warmup_steps_replace_the_ratio(tiny_base, tiny_data, stage1_out, tmp_path):
    cfg = _cfg(tiny_base, tiny_data, stage1_out, tmp_path / "w", "optim.warmup_steps=4", "optim.warmup_ratio=0.5",
               "optim.schedule=constant", "optim.max_steps=6")
    # the rate logged after each step is the next step's: warmup over 4 steps (not 3 = 0.5 × 6), then constant
    lrs = [r["lr"] for _, r in sorted(read_metrics(run_training(cfg)).items())]
    assert lrs == pytest.approx([x * 5e-3 for x in (2 / 4, 3 / 4, 1, 1, 1, 1)])
