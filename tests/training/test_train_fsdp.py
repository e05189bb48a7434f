"""FSDP2 on CPU: 2 processes (gloo) under torchrun train tiny stage 2 (sharded trainable LLM, frozen tower,
text-only samples, gradient accumulation without sync), save a sharded checkpoint, resume from it, and follow the
single-process loss curve (same global batch and data order; different micro-batching, same token-level loss)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from train_fixtures import base_overrides, read_metrics

REPO = Path(__file__).resolve().parents[2]


def _torchrun(args: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "llava_local.cli", "train", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_fsdp2_two_processes_sharded_checkpoint_and_resume(tiny_base, tiny_data, stage1_out, stage2_out, tmp_path):
    out = tmp_path / "fsdp"
    # micro-batch 1 × 2 ranks × accumulation 2 = the global batch 4 of the single-process stage2_out run.
    args = ["tiny-stage2", *base_overrides(tiny_base, tiny_data[1], out), f"model.init_from={stage1_out}",
            "optim.epochs=2", "optim.micro_batch_size=1", "train.checkpoint_every=2"]
    first = _torchrun([*args, "train.stop_after_steps=3"])
    assert first.returncode == 0, first.stderr[-3000:]
    ckpts = sorted((out / "checkpoints").glob("step-*"))
    assert [c.name for c in ckpts] == ["step-00000002", "step-00000003"]
    shards = sorted(p.name for p in ckpts[0].glob("*.distcp"))
    assert len(shards) == 2, shards  # one shard file per rank: a sharded (FSDP2) checkpoint
    assert (ckpts[0] / "rank-0.pt").is_file() and (ckpts[0] / "rank-1.pt").is_file()
    assert not (out / "model.safetensors").exists()
    shutil.rmtree(ckpts[1])  # as if killed after step 3 but before its checkpoint
    second = _torchrun([*args, "--resume"])
    assert second.returncode == 0, second.stderr[-3000:]
    fsdp, single = read_metrics(out), read_metrics(stage2_out)
    assert sorted(fsdp) == sorted(single) == list(range(1, 9))
    for step in single:
        # Same samples and normalisation; only the order of floating-point reductions differs.
        assert fsdp[step]["loss"] == pytest.approx(single[step]["loss"], abs=1e-4), step
    assert (out / "model.safetensors").is_file() and (out / "llava_local.json").is_file()
