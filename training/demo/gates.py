"""Held-out gates: a curriculum stage trains until its skill is learned, not for a fixed number of steps.

Contract:
- `Gate(probe, target, every, max_steps)` (recipe.yaml `gates.<stage>`): the stage runs its preset's steps, then
  probes every `every` steps and stops at the first probe that reaches `target`, or at `max_steps`.
- `PROBES[name](checkpoint, n, seed) -> float` scores an exported checkpoint on scenes `make_scene(seed, 0..n-1)`:
    - `listing`: the image, then one named object's phrase and a colon ("red circle:"), on the listing stage's
      `plain` template → is the greedy continuation that object's region? (the skill the listing stage teaches);
    - `position`: the eval's position questions (teacher wordings, the checkpoint's chat template) → right?
- `gate_probe(gate, n, seed, history)` → the trainer's probe (`training.trainer.Probe`): scores, appends
  `{"step", "score"}` to `history`, says stop when the score reaches the target.

Why: with the same data and schedule, the listing stage learned to find a named object's image token with one vision
tower (94% after 2,000 steps) and not with another as good by a linear probe (48%); every later stage builds on it,
and the whole run then missed its target (docs/demo-model.md). The gate's scenes are their own world seed, neither
the training world nor the eval's, so the gate never selects on the scenes the model is scored on.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llava_local.errors import UsageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Gate:
    probe: str  # a PROBES name
    target: float  # share right, 0..1 (0: probe once, after the preset's steps)
    every: int  # steps between probes after the preset's own steps
    max_steps: int  # the cap, preset steps included

    def __post_init__(self) -> None:
        if self.probe not in PROBES:
            raise UsageError(f"gate probe {self.probe!r} is unknown; known: {', '.join(sorted(PROBES))}")
        if not (0 <= self.target <= 1 and self.every > 0 and self.max_steps > 0):
            raise UsageError("a gate needs a target in [0, 1], every > 0 and max_steps > 0")


def listing_accuracy(checkpoint: str | Path, n: int, seed: int, batch_size: int = 32) -> float:
    """Share of scenes where "<image>{phrase}:" continues with the named object's region (one object per scene,
    drawn at random among those a unique phrase names)."""
    from llava_local.templates import Piece
    from training.datagen.render import render
    from training.datagen.world import make_scene, referable

    from .evaluate import TorchModel

    tm = TorchModel.load(checkpoint)
    size = tm.model.config.vision_config.image_size
    items = []  # (image, phrase, region)
    for i in range(n):
        scene = make_scene(seed, i)
        if named := referable(scene):
            obj, phrase = random.Random(f"gate-listing:{seed}:{i}").choice(named)
            items.append((render(scene, size), phrase, obj.region))
    right = 0
    for b in range(0, len(items), batch_size):
        batch = items[b: b + batch_size]
        # the listing record's own layout: image slots, then "phrase: region. phrase: region." (corpus.listing)
        seqs = [tm.encode([Piece("image"), Piece("text", f"{phrase}:")]) for _, phrase, _ in batch]
        for (_, _, region), text in zip(batch, tm.generate(seqs, [im for im, _, _ in batch], 8), strict=True):
            right += text.split(".")[0].strip() == region
    return right / max(len(items), 1)


def position_accuracy(checkpoint: str | Path, n: int, seed: int) -> float:
    """Share of the eval's position questions (teacher wordings) answered right."""
    from .evaluate import evaluate_torch

    right, total = evaluate_torch(checkpoint, n, seed, qtypes=("position",)).per_type()["position"]
    return right / max(total, 1)


PROBES = {"listing": listing_accuracy, "position": position_accuracy}


def gate_probe(gate: Gate, n: int, seed: int, history: list[dict[str, Any]]):
    """The trainer's probe for `gate`: score the exported checkpoint, record it, stop once the target is reached."""

    def probe(out_dir: Path, step: int) -> bool:
        score = PROBES[gate.probe](out_dir, n, seed)
        history.append({"step": step, "score": round(score, 4)})
        # a gated stage can run for an hour past its preset: say after each probe where it stands
        log.info("step %d: %s probe %.1f%% (target %.0f%%)", step, gate.probe, 100 * history[-1]["score"],
                 100 * gate.target)
        return score >= gate.target

    return probe
