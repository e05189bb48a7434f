"""A ScienceQA release in the official file layout, written by hand (not by `training.scienceqa.synth`), for tests.

`make_release(root)` writes `problems.json`, `pid_splits.json` and `images/<split>/<pid>/image.png` for
`N_PROBLEMS` problems covering the three subjects, grades on both sides of 6/7, and every context kind: image
only, hint only, image and hint, neither. Choices number 2 to 5. Returns the problems as written (pid → dict),
so tests can count categories from the labels themselves.
"""

from __future__ import annotations

import json
from pathlib import Path

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}
SUBJECTS = ("natural science", "social science", "language science")
N_PROBLEMS = 36


def _draw(path: Path, colour: str) -> None:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (64, 56), (245, 245, 245))
    ImageDraw.Draw(img).ellipse((12, 10, 48, 46), fill=COLOURS[colour])
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def make_release(root: Path) -> dict[str, dict]:
    root.mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    problems: dict[str, dict] = {}
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for i in range(N_PROBLEMS):
        pid = str(100 + i)
        split = ("test", "train", "train", "val", "test", "train", "train", "test", "train")[(i * 5) % 9]
        context = ("image", "hint", "both", "none")[i % 4]
        colour = names[i % len(names)]
        n_choices = 2 + i % 4  # 2..5
        choices = [names[(i + k) % len(names)] if k < len(names) else "black" for k in range(n_choices)]
        answer = (i * 7) % n_choices
        choices[answer], choices[0] = choices[0], choices[answer]  # the right colour sits at `answer`
        image = "image.png" if context in ("image", "both") else None
        if image:
            _draw(root / "images" / split / pid / image, colour)
        problems[pid] = {
            "question": "Which colour is the ball?" if image else f"Which word names the colour {colour}?",
            "choices": choices, "answer": answer,
            "hint": f"The ball is {colour}." if context in ("hint", "both") else "",
            "image": image, "task": "closed choice", "grade": f"grade{1 + (i * 5) % 12}",
            "subject": SUBJECTS[(i // 4) % 3], "topic": "colours", "category": "Colours", "skill": "Name colours",
            "lecture": "Colours are properties of objects." if i % 5 else "",
            "solution": f"The ball is {colour}." if i % 6 else "", "split": split,
        }
        splits[split].append(pid)
    splits["minival"], splits["minitest"], splits["trainval"] = splits["val"][:3], splits["test"][:3], \
        splits["train"] + splits["val"]
    (root / "problems.json").write_text(json.dumps(problems, indent=1))
    (root / "pid_splits.json").write_text(json.dumps(splits, indent=1))
    return problems


def hand_count(problems: dict, right: dict[str, bool]) -> dict[str, list[bool]]:
    """The paper's columns counted by hand from the fixture's labels (not through `training.scienceqa.score`):
    column → whether each problem in it was answered right."""
    cols: dict[str, list[bool]] = {c: [] for c in ("NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12", "Avg")}
    for pid, ok in right.items():
        p = problems[pid]
        cols[{"natural science": "NAT", "social science": "SOC", "language science": "LAN"}[p["subject"]]].append(ok)
        cols["G1-6" if int(p["grade"].removeprefix("grade")) <= 6 else "G7-12"].append(ok)
        cols["Avg"].append(ok)
        if p["hint"]:
            cols["TXT"].append(ok)
        if p["image"]:
            cols["IMG"].append(ok)
        if not p["hint"] and not p["image"]:
            cols["NO"].append(ok)
    return cols
