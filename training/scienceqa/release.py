"""The official ScienceQA release on disk: `problems.json`, `pid_splits.json`, `images/<split>/<pid>/<image>`.

Contract:
- `load_release(base_dir)` reads the two JSON files (the layout of lupantech/ScienceQA's `data/scienceqa`) and
  returns a `Release`: problem id → `Problem`, split name → ordered problem ids. A missing file, unreadable
  JSON or a problem without the fields we use raises `ScienceQAError` (one line, naming the file or problem).
- `Release.problems_of(split)` → the split's problems in `pid_splits.json` order; an unknown split name is a
  `ScienceQAError` listing the splits the file has (train, val, test, trainval, minitrain, minival, minitest).
- `image_path(base_dir, problem)` → `images/<split>/<pid>/<image>` (None for a question without an image), where
  `<split>` is the problem's own `split` field: the mini splits hold ids of train/val/test problems, and the
  release stores each image under the problem's own split.
- `IMAGE_ROOT_NOTE`: LLaVA's JSON names images `<pid>/image.png` relative to `images/<split>`, so its training
  config points the image folder at `images/train`; we do the same so the files interchange.

Fields of a problem (upstream names): question, choices (2-5 strings), answer (index into choices), hint (the
text context, possibly empty), image (file name or null), subject (natural/social/language science), grade
("grade1".."grade12"), lecture, solution; the rest (task, topic, category, skill) is kept in `extra`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llava_local.errors import UsageError

SPLITS = ("train", "val", "test", "trainval", "minitrain", "minival", "minitest")
OPTIONS = ("A", "B", "C", "D", "E")  # letters for choices 0..4, as upstream's `--options`


class ScienceQAError(UsageError):
    """A ScienceQA release, option or prediction file the user must fix."""


@dataclass(frozen=True)
class Problem:
    """One ScienceQA question; `answer` indexes `choices`, `image` is a file name or None."""

    pid: str
    question: str
    choices: tuple[str, ...]
    answer: int
    hint: str
    image: str | None
    subject: str
    grade: str
    lecture: str
    solution: str
    split: str
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Release:
    base_dir: Path
    problems: dict[str, Problem]
    splits: dict[str, tuple[str, ...]]

    def problems_of(self, split: str) -> list[Problem]:
        if split not in self.splits:
            raise ScienceQAError(f"split {split!r} is not in {self.base_dir / 'pid_splits.json'} "
                                 f"(it has {', '.join(self.splits)})")
        missing = [p for p in self.splits[split] if p not in self.problems]
        if missing:
            raise ScienceQAError(f"pid_splits.json names problem {missing[0]!r} (split {split}) that problems.json "
                                 f"lacks ({len(missing)} such)")
        return [self.problems[p] for p in self.splits[split]]


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise ScienceQAError(f"{path}: not found; --base-dir must be the release folder holding problems.json, "
                             "pid_splits.json and images/ (data/scienceqa in lupantech/ScienceQA)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ScienceQAError(f"{path}: not valid JSON ({e})") from None


def parse_problem(pid: str, raw: Any, default_split: str = "") -> Problem:
    """One entry of problems.json → `Problem`; a malformed entry is a `ScienceQAError` naming it."""
    if not isinstance(raw, dict):
        raise ScienceQAError(f"problems.json: problem {pid} is not an object")
    try:
        choices = tuple(str(c) for c in raw["choices"])
        answer = int(raw["answer"])
        question = str(raw["question"])
    except (KeyError, TypeError, ValueError) as e:
        raise ScienceQAError(f"problems.json: problem {pid} lacks a usable question/choices/answer ({e})") from None
    if not 2 <= len(choices) <= len(OPTIONS) or not 0 <= answer < len(choices):
        raise ScienceQAError(f"problems.json: problem {pid} has {len(choices)} choices and answer {answer}; "
                             f"need 2..{len(OPTIONS)} choices and an answer index among them")
    known = {"question", "choices", "answer", "hint", "image", "subject", "grade", "lecture", "solution", "split"}
    return Problem(pid=str(pid), question=question, choices=choices, answer=answer, hint=str(raw.get("hint") or ""),
                   image=raw.get("image") or None, subject=str(raw.get("subject", "")),
                   grade=str(raw.get("grade", "")), lecture=str(raw.get("lecture") or ""),
                   solution=str(raw.get("solution") or ""), split=str(raw.get("split") or default_split),
                   extra={k: v for k, v in raw.items() if k not in known})


def load_release(base_dir: str | Path) -> Release:
    base = Path(base_dir).expanduser()
    raw_problems = _read_json(base / "problems.json")
    raw_splits = _read_json(base / "pid_splits.json")
    if not isinstance(raw_problems, dict) or not isinstance(raw_splits, dict):
        raise ScienceQAError(f"{base}: problems.json and pid_splits.json must both be JSON objects")
    split_of = {str(p): s for s in ("train", "val", "test") for p in raw_splits.get(s, [])}
    problems = {str(pid): parse_problem(str(pid), raw, split_of.get(str(pid), "")) for pid, raw in raw_problems.items()}
    splits = {str(k): tuple(str(p) for p in v) for k, v in raw_splits.items() if isinstance(v, list)}
    return Release(base, problems, splits)


def image_rel(problem: Problem) -> str | None:
    """The image relative to `images/<split>` (LLaVA's `image` field), or None."""
    return f"{problem.pid}/{problem.image}" if problem.image else None


def image_path(base_dir: str | Path, problem: Problem) -> Path | None:
    rel = image_rel(problem)
    return None if rel is None else Path(base_dir).expanduser() / "images" / problem.split / rel
