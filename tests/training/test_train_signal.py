"""A real kill and an exact resume. SIGTERM to a LoRA stage-2 run (dropout on) finishes the step, checkpoints and
exits 143; we also drop its newest checkpoint (as if it died between checkpoints); `--resume` must then reproduce
the uninterrupted run's losses within 1e-6 (model, optimizer, scheduler, data position and RNG restored), and both
runs must write the same merged weights."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from train_fixtures import base_overrides, read_metrics

from llava_local.cli import main
from training.checkpoint import COMPLETE

REPO = Path(__file__).resolve().parents[2]


def _kill_after_first_step(args: list[str], metrics: Path) -> str:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "llava_local.cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 1):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    return err


def test_sigterm_then_resume_reproduces_the_loss_curve(tiny_base, tiny_data, stage1_out, tmp_path):
    common = ["train", "tiny-stage2", *base_overrides(tiny_base, tiny_data[1], tmp_path / "x"),
              f"model.init_from={stage1_out}", "optim.epochs=2", "optim.lr=5e-3", "train.checkpoint_every=2",
              "lora.enabled=true", "lora.r=8", "lora.alpha=16", "lora.dropout=0.1"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    err = _kill_after_first_step([*common, f"train.out_dir={killed}"], killed / "metrics.jsonl")
    assert "continue with --resume" in err and "Traceback" not in err
    stopped_at = max(read_metrics(killed))
    assert 1 <= stopped_at < 8, "stopped mid-run"
    ckpts = sorted(p for p in (killed / "checkpoints").glob("step-*") if (p / COMPLETE).is_file())
    assert ckpts[-1].name == f"step-{stopped_at:08d}"
    assert not (killed / "model.safetensors").exists()
    if len(ckpts) > 1:
        shutil.rmtree(ckpts[-1])  # died before this checkpoint: resume from the previous one
    assert main([*common, f"train.out_dir={killed}", "--resume"]) == 0
    assert main([*common, f"train.out_dir={full}"]) == 0

    got, want = read_metrics(killed), read_metrics(full)
    assert sorted(got) == sorted(want) == list(range(1, 9))
    for s in want:
        assert abs(got[s]["loss"] - want[s]["loss"]) <= 1e-6, (s, got[s]["loss"], want[s]["loss"])
    wa, wb = load_file(str(full / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    assert not any("lora" in k or "base_layer" in k for k in wa), "adapters must be merged"
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    base = load_file(str(stage1_out / "model.safetensors"))
    q = "language_model.model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(wa[q], base[q]), "the merged LoRA delta is in the weights"
    emb = "language_model.model.embed_tokens.weight"
    assert torch.equal(wa[emb], base[emb]), "LoRA leaves the non-adapted weights alone"
