"""Diagnostic: what a vision tower's tokens say about the object in their cell, by a linear probe. Seconds.

`python -m training.demo.probes.tower_probe build/demo/base-clip` (after the recipe's clip stage).

Contract:
- `cell_tokens(features, seed, n)` → `CellTokens`: for every object of scenes `make_scene(seed, 0..n-1)`, the
  token of its grid cell (objects, hidden), its shape and colour indices and its size name. `features` is any
  scene → (9, hidden) function; a real tower's tokens as LLaVA's stages read them (last layer, class token
  dropped) come from `lookup_probe.TowerFeatures`.
- `probe_tokens(train, test)` fits one linear softmax classifier per attribute (shape, colour) on `train` and
  scores it on `test`: accuracy overall and per size, and the most frequent confusions. Features are standardised
  with the training tokens' mean and std; the fit is full-batch L-BFGS with a small L2 penalty (deterministic).
- `probe(tower_dir, train_n, test_n)` does that for a tower directory: training scenes from world `world_seed`,
  held-out ones from world `eval_seed`.
- What a linear probe cannot read, the recipe's projector (two layers) mostly cannot either: when the probe
  confuses small triangles and diamonds, so do the model's descriptions (docs/demo-model-history.md, thirteenth round).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from training.datagen.world import COLOURS, SHAPES, Scene, make_scene

from .lookup_probe import TowerFeatures

ATTRIBUTES = {"shape": tuple(SHAPES), "colour": tuple(COLOURS)}


@dataclass(frozen=True)
class CellTokens:
    tokens: torch.Tensor  # (objects, hidden) float32
    labels: dict[str, torch.Tensor]  # attribute → (objects,) class index into ATTRIBUTES[attribute]
    sizes: list[str]  # (objects,) "small" | "large"


def cell_tokens(tower: Callable[[Scene], torch.Tensor], seed: int, n: int) -> CellTokens:
    """The token of each object's cell, for the objects of scenes 0..n-1 of world `seed`."""
    rows, sizes = [], []
    labels: dict[str, list[int]] = {a: [] for a in ATTRIBUTES}
    for i in range(n):
        scene = make_scene(seed, i)
        feats = tower(scene)  # (9, hidden), raster order
        for o in scene.objects:
            rows.append(feats[3 * o.row + o.col])
            for attr, names in ATTRIBUTES.items():
                labels[attr].append(names.index(getattr(o, attr)))
            sizes.append(o.size)
    return CellTokens(torch.stack(rows), {a: torch.tensor(v) for a, v in labels.items()}, sizes)


def _fit(x: torch.Tensor, y: torch.Tensor, classes: int, l2: float = 1e-4) -> torch.nn.Linear:
    torch.manual_seed(0)
    lin = torch.nn.Linear(x.shape[1], classes)
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(x), y) + l2 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lin


def probe(tower_dir: str | Path, train_n: int = 4000, test_n: int = 600, world_seed: int = 0,
          eval_seed: int = 1000) -> dict[str, Any]:
    """Held-out linear-probe accuracy of a tower's cell tokens, per attribute: overall, by size, top confusions."""
    tower = TowerFeatures(tower_dir)
    train, test = cell_tokens(tower, world_seed, train_n), cell_tokens(tower, eval_seed, test_n)
    return {"tower": str(tower_dir), **probe_tokens(train, test)}


def probe_tokens(train: CellTokens, test: CellTokens) -> dict[str, Any]:
    """Fit on `train`, score on `test` (see `probe`)."""
    mean, std = train.tokens.mean(0), train.tokens.std(0) + 1e-6
    x_train, x_test = (train.tokens - mean) / std, (test.tokens - mean) / std
    out: dict[str, Any] = {"train_objects": len(train.sizes), "test_objects": len(test.sizes)}
    for attr, names in ATTRIBUTES.items():
        lin = _fit(x_train, train.labels[attr], len(names))
        with torch.no_grad():
            pred = lin(x_test).argmax(dim=1)
        right = (pred == test.labels[attr]).tolist()
        by_size = {s: [r for r, z in zip(right, test.sizes) if z == s] for s in sorted(set(test.sizes))}
        confusions = Counter((names[t], names[p]) for t, p in zip(test.labels[attr].tolist(), pred.tolist()) if t != p)
        out[attr] = {"accuracy": round(sum(right) / len(right), 4),
                     "by_size": {s: round(sum(v) / len(v), 4) for s, v in by_size.items()},
                     "confusions": [f"{t} → {p}: {k}" for (t, p), k in confusions.most_common(4)]}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.demo.probes.tower_probe", description=__doc__.splitlines()[0])
    p.add_argument("tower", help="a CLIPVisionModel directory (the recipe's build/demo/base-clip)")
    p.add_argument("--train-n", type=int, default=4000, help="training scenes (world 0)")
    p.add_argument("--test-n", type=int, default=600, help="held-out scenes (world 1000)")
    args = p.parse_args(argv)
    if not (Path(args.tower) / "config.json").is_file():
        print(f"tower_probe: error: {args.tower} is not a model directory (no config.json)", file=sys.stderr)
        return 2
    print(json.dumps(probe(args.tower, args.train_n, args.test_n), indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
