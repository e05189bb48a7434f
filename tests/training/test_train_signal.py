"""A real kill: SIGTERM to a training process finishes the step, checkpoints, exits 143; `--resume` then
reproduces the uninterrupted run's loss curve (the session's stage2_out, same config) within 1e-6."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from train_fixtures import base_overrides, read_metrics

from llava_local.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_sigterm_checkpoints_and_resume_continues_the_curve(tiny_base, tiny_data, stage1_out, stage2_out, tmp_path):
    out = tmp_path / "killed"
    args = ["train", "tiny-stage2", *base_overrides(tiny_base, tiny_data[1], out), f"model.init_from={stage1_out}",
            "optim.epochs=2", "train.checkpoint_every=100"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "llava_local.cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 180
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "continue with --resume" in err and "Traceback" not in err
    last = max(read_metrics(out))
    assert 2 <= last < 8, "stopped mid-run"
    assert (out / "checkpoints" / f"step-{last:08d}" / "COMPLETE").is_file()
    assert not (out / "model.safetensors").exists()
    assert main([*args, "--resume"]) == 0
    got, want = read_metrics(out), read_metrics(stage2_out)
    assert sorted(got) == sorted(want)
    assert all(abs(got[s]["loss"] - want[s]["loss"]) <= 1e-6 for s in want), [(got[s]["loss"], want[s]["loss"])
                                                                            for s in want]
