"""ScienceQA split → LLaVA conversation JSON (what `training/dataset.py` reads, and what upstream LLaVA reads).

Contract: `to_records(release, split, fmt)` → one record per problem of the split, in `pid_splits.json` order:
`{"id": pid, "conversations": [{"from": "human", ...}, {"from": "gpt", ...}]}`, plus `"image": "<pid>/<file>"`
and a trailing `"\n<image>"` on the human turn when the problem has an image (relative to `images/<split>`,
LLaVA's layout; `training/dataset.py` moves the mark to the start of the turn, as LLaVA does). Problems without
an image are text-only records. With `check_images=True` a record whose image file is missing raises
`ScienceQAError` naming it. `write(records, path)` writes the JSON list atomically; `image_root(base, split)` is
the folder a training config's `data.image_root` must name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .prompts import render
from .release import Release, ScienceQAError, image_path, image_rel

IMAGE_MARK = "<image>"


def to_records(release: Release, split: str, fmt: str, check_images: bool = True) -> list[dict[str, Any]]:
    records = []
    for p in release.problems_of(split):
        human, gpt = render(p, fmt)
        rel = image_rel(p)
        rec: dict[str, Any] = {"id": p.pid}
        if rel is not None:
            path = image_path(release.base_dir, p)
            if check_images and not (path and path.is_file()):
                raise ScienceQAError(f"problem {p.pid}: image {path} is missing; download images/ into the release "
                                     "folder (or pass --no-image-check)")
            rec["image"] = rel
            human = f"{human}\n{IMAGE_MARK}"
        rec["conversations"] = [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]
        records.append(rec)
    return records


def image_root(base_dir: str | Path, split: str) -> Path:
    """Where a split's `<pid>/image.png` paths start (mini splits draw from train/val/test: see the docs)."""
    return Path(base_dir).expanduser() / "images" / {"minitrain": "train", "minival": "val",
                                                    "minitest": "test"}.get(split, split)


def write(records: list[dict[str, Any]], path: str | Path) -> Path:
    out = Path(path).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(records, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, out)
    return out
