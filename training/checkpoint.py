"""Resumable checkpoints: sharded model + optimizer state (torch.distributed.checkpoint) and per-rank loop state.

Contract: `save(root, step, model, optimizer, extra, dist)` writes `root/step-XXXXXXXX/`:
- DCP files (`*.distcp` + `.metadata`) holding the *trainable* parameters and their optimizer state, through
  `get_state_dict(model, optimizer)`: each rank writes its own shards under FSDP2, a single process writes
  plain tensors; either way `load` reshards on read. Frozen weights are not saved: they are re-read from the
  base dirs, which keeps a stage-1 checkpoint of a 7B model at a few MB.
- `rank-R.pt`: that rank's scheduler state, step, and RNG states (python, numpy, torch CPU and CUDA), so a
  resumed run draws the same dropout masks; the data order is a pure function of (seed, epoch, step). It holds
  tensors and plain data only (numpy's state as a list of ints) and is read with `torch.load(weights_only=True)`,
  so a checkpoint from someone else cannot run code when resumed.
- `trainer_state.json` (step, world size, micro/accumulation) and finally `COMPLETE`; a directory without it
  (a run killed while saving) is ignored by `latest`.
Checkpoints are written to a temporary name and renamed, and all but the newest `keep` are deleted.
"""

from __future__ import annotations

import json
import random
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from llava_local.errors import UsageError

from .distributed import Dist, barrier

COMPLETE = "COMPLETE"


def _options(strict: bool = True):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # Frozen weights come from the base dirs; on load the model keeps them (non-strict), while dcp.load
    # still fails if a trainable tensor is missing from the checkpoint.
    return StateDictOptions(ignore_frozen_params=True, strict=strict)


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    # numpy's 624 uint32 keys as plain ints: an ndarray would need numpy's pickle globals on load.
    state = {"python": random.getstate(), "numpy": (kind, keys.tolist(), pos, has_gauss, gauss),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:08d}"


def latest(root: str | Path) -> Path | None:
    """The newest complete checkpoint under `root`, or None."""
    root = Path(root)
    done = sorted(p for p in root.glob("step-*") if (p / COMPLETE).is_file()) if root.is_dir() else []
    return done[-1] if done else None


def save(root: str | Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
         extra: dict[str, Any], dist: Dist, keep: int = 2) -> Path:
    """Write a checkpoint of every rank (a collective under FSDP2) and return its directory."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    root = Path(root)
    final = step_dir(root, step)
    tmp = root / f".tmp-step-{step:08d}"
    if dist.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(dist)
    model_sd, optim_sd = get_state_dict(model, optimizer, options=_options())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")  # one process: fine
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
    torch.save({**extra, "rng": rng_state()}, tmp / f"rank-{dist.rank}.pt")
    barrier(dist)
    if dist.is_main:
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, "world_size": dist.world,
                                                            **{k: v for k, v in extra.items() if k != "scheduler"}},
                                                           indent=2))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        (final / COMPLETE).write_text("ok\n")
        for old in sorted(p for p in root.glob("step-*") if (p / COMPLETE).is_file())[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier(dist)
    return final


def load(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, dist: Dist) -> dict[str, Any]:
    """Restore model + optimizer shards and this rank's loop state/RNG; returns the saved `extra`."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    path = Path(path)
    meta = json.loads((path / "trainer_state.json").read_text())
    if meta["world_size"] != dist.world:
        raise UsageError(f"checkpoint {path.name} was written by {meta['world_size']} processes, this run has "
                         f"{dist.world}; resume with the same number of processes (torchrun --nproc-per-node)")
    model_sd, optim_sd = get_state_dict(model, optimizer, options=_options())
    state = {"model": model_sd, "optim": optim_sd}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                   options=_options(strict=False))
    extra = _load_plain(path / f"rank-{dist.rank}.pt")
    set_rng_state(extra.pop("rng"))
    return extra


def _numpy_globals() -> list[Any]:
    """What pickled numpy RNG states (checkpoints from before the list-of-ints format) reference: data, no code."""
    multiarray = getattr(np, "_core", None) or np.core
    return [multiarray.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def _load_plain(path: Path) -> dict[str, Any]:
    """torch.load restricted to tensors and plain data; anything else is refused with one line."""
    import pickle

    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            extra = torch.load(path, weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, OSError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UsageError(f"cannot resume from {path}: it is not a checkpoint this trainer wrote, or it holds more "
                         f"than tensors and plain data, which could run code when loaded ({first})") from None
    if not isinstance(extra, dict) or "rng" not in extra:
        raise UsageError(f"cannot resume from {path}: not a llava-local loop state")
    return extra
