"""A small ScienceQA-format release drawn from the synthetic shapes world: a format demonstration, not a science
benchmark.

Contract: `synthesize(out, n, seed, size)` writes `out/problems.json`, `out/pid_splits.json` and
`out/images/<split>/<pid>/image.png` in the official layout, with problem ids "1".."n". Problem `i` uses scene
`make_scene(seed, i)` (`training.datagen.world`; the demo model trained on world 0, so the default seed 1 is held
out) and one question kind from `KINDS`, in rotation: each kind fixes the subject, the grade, whether the
problem has an image and/or a hint, and builds the question, the choices (2-5, shuffled), the answer, a lecture
and a solution from the scene's symbolic facts (so every answer is right by construction). The kinds cover all
three subjects, both grade bands and the three context columns of the paper's table (IMG, TXT, NO).
Splits: 60% train, 20% val, 20% test by id order, minival/minitest the first tenth (at least one) of val/test.
Deterministic: the same arguments write the same bytes.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.datagen.render import render
from training.datagen.teacher import LOCATION, group_phrase
from training.datagen.world import COLOURS, REGIONS, SHAPES, Scene, make_scene, number_word, referable

CORNERS = {"circle": 0, "triangle": 3, "square": 4, "diamond": 4}
LECTURES = {
    "count": "To count objects, point at each one once and say the next number.",
    "colour": "Colour is a property of an object. Red, blue, green, yellow, purple and orange are colours.",
    "map": "A map shows where things are. The top of a map is north and the left is west.",
    "corners": "A corner is where two straight sides meet. A circle has no straight sides.",
    "alphabet": "In alphabetical order, words are sorted by their first letter, then the next letter.",
    "word": "A noun names a thing. Some nouns name colours and some name shapes.",
}


@dataclass(frozen=True)
class Made:
    question: str
    choices: list[str]
    answer: str
    lecture: str
    solution: str


def _mc(right: str, wrong: list[str], rng: random.Random, k: int) -> list[str]:
    picks = [right, *rng.sample(sorted(set(wrong) - {right}), min(k - 1, len(set(wrong) - {right})))]
    rng.shuffle(picks)
    return picks


def _count(scene: Scene, rng: random.Random) -> Made:
    shape = rng.choice(sorted({o.shape for o in scene.objects}))
    n = len(scene.matching(shape=shape))
    choices = _mc(str(n), [str(i) for i in range(1, 6)], rng, 3)
    return Made(f"How many {shape}s are there?", choices, str(n), LECTURES["count"],
                f"Count the {shape}s: there {'is' if n == 1 else 'are'} {number_word(n)}.")


def _colour(scene: Scene, rng: random.Random) -> Made:
    # name the object by its shape (and size) only: "the orange diamond" would give the answer away
    cands = [(o, ref) for o in scene.objects for ref in (o.shape, f"{o.size} {o.shape}")
             if len(scene.matching(shape=o.shape, size=None if ref == o.shape else o.size)) == 1]
    if not cands:
        return _count(scene, rng)
    o, ref = min(cands, key=lambda c: len(c[1].split()))  # the shortest name of the first nameable object
    choices = _mc(o.colour, list(COLOURS), rng, 4)
    return Made(f"What colour is the {ref}?", choices, o.colour, LECTURES["colour"], f"The {ref} is {o.colour}.")


def _where(scene: Scene, rng: random.Random) -> Made:
    o, ref = rng.choice(referable(scene) or [(scene.objects[0], scene.objects[0].phrase())])
    choices = _mc(o.region, list(REGIONS.values()), rng, 4)
    return Made(f"Where is the {ref} on the map?", choices, o.region, LECTURES["map"],
                f"The {ref} is {LOCATION[o.region]}.")


def _count_text(scene: Scene, rng: random.Random) -> Made:
    return _count(scene, rng)


def _corners(scene: Scene, rng: random.Random) -> Made:
    shape = rng.choice(SHAPES)
    n = CORNERS[shape]
    choices = _mc(str(n), ["0", "2", "3", "4", "5"], rng, 3)
    return Made(f"How many corners does a {shape} have?", choices, str(n), LECTURES["corners"],
                f"A {shape} has {number_word(n) if n else 'no'} corners.")


def _alphabet(scene: Scene, rng: random.Random) -> Made:
    words = rng.sample(sorted(set(SHAPES) | set(COLOURS)), 2)
    first = min(words)
    return Made("Which word comes first in alphabetical order?", words, first, LECTURES["alphabet"],
                f"Compare the first letters: {first} comes before {max(words)}.")


def _colour_word(scene: Scene, rng: random.Random) -> Made:
    colour = rng.choice(list(COLOURS))
    choices = _mc(colour, list(SHAPES), rng, 3)
    return Made("Which word names a colour?", choices, colour, LECTURES["word"], f"{colour.capitalize()} is a colour.")


def _scene_hint(scene: Scene) -> str:
    return f"A box holds {group_phrase(list(scene.objects))}."


@dataclass(frozen=True)
class Kind:
    """One question kind: labels and context of the problems it makes, and its maker."""

    subject: str
    grade: str
    image: bool
    hint: Callable[[Scene], str] | None
    make: Callable[[Scene, random.Random], Made]


KINDS: dict[str, Kind] = {
    "count-image": Kind("natural science", "grade2", True, None, _count),
    "colour-image": Kind("natural science", "grade3", True, None, _colour),
    "map-image": Kind("social science", "grade7", True, lambda s: "This picture is a map of a park.", _where),
    "count-text": Kind("natural science", "grade4", False, _scene_hint, _count_text),
    "corners": Kind("natural science", "grade8", False, None, _corners),
    "alphabet": Kind("language science", "grade2", False, None, _alphabet),
    "colour-word": Kind("language science", "grade9", False, None, _colour_word),
}


def _splits(n: int) -> dict[str, list[str]]:
    pids = [str(i) for i in range(1, n + 1)]
    a, b = round(n * 0.6), round(n * 0.8)
    out = {"train": pids[:a], "val": pids[a:b], "test": pids[b:]}
    out["trainval"] = out["train"] + out["val"]
    out["minitrain"] = out["train"][: max(1, len(out["train"]) // 10)]
    out["minival"] = out["val"][: max(1, len(out["val"]) // 10)]
    out["minitest"] = out["test"][: max(1, len(out["test"]) // 10)]
    return out


def synthesize(out: str | Path, n: int, seed: int = 1, size: int = 96) -> dict[str, Any]:
    out = Path(out).expanduser()
    if n < 5:
        raise ValueError("need at least 5 problems (train, val and test each get some)")
    splits = _splits(n)
    split_of = {p: s for s in ("train", "val", "test") for p in splits[s]}
    names = list(KINDS)
    problems: dict[str, dict[str, Any]] = {}
    for i in range(n):
        pid = str(i + 1)
        name = names[i % len(names)]
        kind = KINDS[name]
        scene = make_scene(seed, i)
        made = kind.make(scene, random.Random(f"synth-scienceqa:{seed}:{i}"))
        image = None
        if kind.image:
            d = out / "images" / split_of[pid] / pid
            d.mkdir(parents=True, exist_ok=True)
            render(scene, size).save(d / "image.png")
            image = "image.png"
        problems[pid] = {
            "question": made.question, "choices": made.choices, "answer": made.choices.index(made.answer),
            "hint": kind.hint(scene) if kind.hint else "", "image": image, "task": "closed choice",
            "grade": kind.grade, "subject": kind.subject, "topic": name, "category": name, "skill": name,
            "lecture": made.lecture, "solution": made.solution, "split": split_of[pid],
        }
    out.mkdir(parents=True, exist_ok=True)
    (out / "problems.json").write_text(json.dumps(problems, indent=1), encoding="utf-8")
    (out / "pid_splits.json").write_text(json.dumps(splits, indent=1), encoding="utf-8")
    return {"problems": n, "with_image": sum(1 for p in problems.values() if p["image"]),
            **{s: len(splits[s]) for s in ("train", "val", "test")}}
