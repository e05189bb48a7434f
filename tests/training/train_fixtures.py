"""Helpers for the training tests (imported by conftest.py and the tests; not a test module).

`make_data(root)` writes a tiny image-text data set (56 px PNGs of coloured shapes, LLaVA JSON for both stages),
`base_overrides(...)` the `key=value` overrides that point a tiny preset at the session's models and data, and
`read_metrics(out_dir)` the last metrics record per step.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}
SHAPES = ("square", "circle")


def _draw(path: Path, colour: str, shape: str, size: int = 56) -> None:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size + 8, size), (245, 245, 245))  # not square: exercises "pad"
    d = ImageDraw.Draw(img)
    box = (12, 10, size - 8, size - 10)
    (d.rectangle if shape == "square" else d.ellipse)(box, fill=COLOURS[colour])
    img.save(path)


def make_data(root: Path, n: int = 16, seed: int = 0) -> tuple[Path, Path]:
    """`root/pretrain.json` (captions) and `root/instruct.json` (two-turn, 1 in 8 text-only), images in root."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    pre, inst = [], []
    for i in range(n):
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        name = f"img{i:03d}.png"
        _draw(root / name, colour, shape)
        pre.append({"id": f"p{i}", "image": name, "conversations": [
            {"from": "human", "value": "Describe the image briefly.\n<image>"},
            {"from": "gpt", "value": f"A {colour} {shape}."}]})
        if i % 8 == 7:
            inst.append({"id": f"t{i}", "conversations": [
                {"from": "human", "value": "What colour is the sky?"}, {"from": "gpt", "value": "The sky is blue."}]})
        else:
            inst.append({"id": f"s{i}", "image": name, "conversations": [
                {"from": "human", "value": "<image>\nWhat colour is the shape?"},
                {"from": "gpt", "value": f"It is {colour}."},
                {"from": "human", "value": "What shape is it?"},
                {"from": "gpt", "value": f"A {shape}."}]})
    (root / "pretrain.json").write_text(json.dumps(pre, indent=1))
    (root / "instruct.json").write_text(json.dumps(inst, indent=1))
    return root / "pretrain.json", root / "instruct.json"


def base_overrides(tiny_base, json_path: Path, out_dir: Path) -> list[str]:
    return [f"model.vision_tower={tiny_base.clip_dir}", f"model.language_model={tiny_base.llm_dir}",
            f"data.json={json_path}", f"train.out_dir={out_dir}"]


def read_metrics(out_dir: Path) -> dict[int, dict]:
    """step → the last record logged for it (a resumed run re-logs steps after its checkpoint)."""
    out: dict[int, dict] = {}
    for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out[rec["step"]] = rec
    return out
