"""Resuming reads the loop state with `torch.load(weights_only=True)`: a checkpoint from someone else cannot run
code, while our own checkpoints (including those written before numpy's RNG state became a list) still resume
with every RNG exactly where it was. Real DCP checkpoints of a small model, one process."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from llava_local.errors import UsageError
from training import checkpoint as ckpt
from training.distributed import Dist

ONE = Dist(0, 1, 0, torch.device("cpu"))


def _model_and_optimizer() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    return model, opt


def _draws() -> tuple[float, float, list[float]]:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_resume_restores_every_rng_exactly(tmp_path: Path):
    model, opt = _model_and_optimizer()
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    saved = ckpt.save(tmp_path, 5, model, opt, {"step": 5, "scheduler": {"last_epoch": 5}}, ONE)
    want = _draws()
    _draws()  # move every generator on
    extra = ckpt.load(saved, model, opt, ONE)
    assert extra == {"step": 5, "scheduler": {"last_epoch": 5}}
    assert _draws() == want


class _RunsCode:
    """What a hostile checkpoint can hold: unpickling it calls `Path.write_text`, i.e. runs code of its choosing."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path: Path):
    model, opt = _model_and_optimizer()
    saved = ckpt.save(tmp_path / "ck", 1, model, opt, {"step": 1}, ONE)
    marker = tmp_path / "marker"
    torch.save({"step": 1, "rng": ckpt.rng_state(), "payload": _RunsCode(marker)}, saved / "rank-0.pt")
    with pytest.raises(UsageError, match="could run code"):
        ckpt.load(saved, model, opt, ONE)
    assert not marker.exists()


def test_a_plain_pickle_bomb_is_refused_too(tmp_path: Path):
    model, opt = _model_and_optimizer()
    saved = ckpt.save(tmp_path / "ck", 1, model, opt, {"step": 1}, ONE)
    marker = tmp_path / "marker"
    (saved / "rank-0.pt").write_bytes(pickle.dumps(_RunsCode(marker), protocol=2))
    with pytest.raises(UsageError, match="cannot resume"):
        ckpt.load(saved, model, opt, ONE)
    assert not marker.exists()


def test_checkpoints_from_before_the_list_format_still_resume(tmp_path: Path):
    """Older checkpoints pickled numpy's state as an ndarray: allow-listed numpy reconstruction, nothing else."""
    model, opt = _model_and_optimizer()
    np.random.seed(7)
    saved = ckpt.save(tmp_path, 2, model, opt, {"step": 2}, ONE)
    old = {"step": 2, "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                              "torch": torch.get_rng_state()}}
    torch.save(old, saved / "rank-0.pt")
    want = float(np.random.rand())
    np.random.rand()
    assert ckpt.load(saved, model, opt, ONE) == {"step": 2}
    assert float(np.random.rand()) == want
