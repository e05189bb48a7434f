"""Ask a bundle every question of a ScienceQA split, resumably, and score it.

Contract:
- `run(release, split, model, out, ...)` asks each problem of the split (the first `limit`) through the runtime
  (`llava_local.open_model` + `ChatSession`, greedy, one fresh conversation per question, the image when the
  problem has one) with the single-prediction prompt (`prompts.question_prompt`; `fmt` and `instruction` choose
  another input layout or leave the instruction out), and appends one JSON line per
  finished question to `out`; with a `judge` it also asks the judge (see `judge`) before writing the line.
- The predictions file (JSONL): a first `{"kind": "meta", ...}` line naming the bundle (its path, the sha256 of
  its manifest.json, the quant used), the split and the prompt; then `{"kind": "answer", "question_id",
  "prompt", "text", ["judge": {"model", "first", "second"}], ["error"]}` lines (`question_id`, `prompt` with
  `<image>` for image questions, and `text` as in upstream's answers file). A later line for the same question
  replaces an earlier one. Rerunning the same command reads the file and asks only what is missing: questions
  with no line, and — with `--judge` — lines without a judge record from this judge. A file made with another
  bundle (other manifest hash or quant) or another prompt is refused unless `restart`.
- A question that does not fit the model's context is recorded with an empty answer and `"error"`, scored by
  the fallback like any unreadable answer, and counted.
- `scores(problems, records, fallback)` → {system: `score.Tally`} for the systems the records hold.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .judge import SYSTEMS, Judge, agree, systems
from .prompts import EVAL_FORMAT, SINGLE_PRED_PROMPT, question_prompt
from .release import Problem, Release, ScienceQAError, image_path
from .score import Tally, tally

Progress = Callable[[int, int, str], None]


def bundle_identity(model: str | Path | None, quant: str | None) -> dict[str, str]:
    """Path, manifest sha256 and the quant that will be used (the manifest default unless `quant`)."""
    from llava_local import resolve_model

    bundle = resolve_model(None if model is None else str(model))
    raw = (bundle / "manifest.json").read_bytes()
    try:
        default = json.loads(raw)["llm"]["default"]
    except (ValueError, KeyError, TypeError):
        default = "?"
    return {"bundle": str(bundle.resolve()), "manifest_sha256": hashlib.sha256(raw).hexdigest(),
            "quant": quant or default}


def read_predictions(path: Path) -> tuple[dict[str, Any] | None, dict[str, dict[str, Any]]]:
    """(meta line or None, question id → its last answer line); a torn last line (a killed run) is skipped."""
    if not path.is_file():
        return None, {}
    meta, records = None, {}
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                continue
            raise ScienceQAError(f"{path}: line {i + 1} is not JSON; not an eval scienceqa predictions file") from None
        if rec.get("kind") == "meta":
            meta = rec
        elif rec.get("kind") == "answer" and "question_id" in rec:
            records[str(rec["question_id"])] = rec
    return meta, records


class _Appender:
    def __init__(self, path: Path, fresh: bool) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not fresh and path.is_file():
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):  # a killed run's torn line: cut it so appends stay whole
                path.write_bytes(data[: data.rfind(b"\n") + 1])
        self.f = open(path, "w" if fresh else "a", encoding="utf-8")  # noqa: SIM115 (closed by close())

    def write(self, rec: dict[str, Any]) -> None:
        self.f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


def _needs(p: Problem, records: dict[str, dict[str, Any]], judge_id: str | None) -> tuple[bool, bool]:
    """(ask LLaVA, ask the judge) for one problem, given what the file already holds."""
    rec = records.get(p.pid)
    if rec is None:
        return True, judge_id is not None
    return False, judge_id is not None and (rec.get("judge") or {}).get("model") != judge_id


def run(release: Release, split: str, model: str | Path | None, out: Path, *, limit: int | None = None,
        judge: Judge | None = None, judge_id: str | None = None, device: str = "cpu", threads: int | None = None,
        quant: str | None = None, max_tokens: int = 128, restart: bool = False, fmt: str = EVAL_FORMAT,
        instruction: str | None = SINGLE_PRED_PROMPT, progress: Progress | None = None
        ) -> tuple[list[Problem], dict[str, Any], dict[str, dict[str, Any]]]:
    """Ask what is missing; returns (problems, meta, question id → record)."""
    problems = release.problems_of(split)[:limit] if limit else release.problems_of(split)
    ident = bundle_identity(model, quant)
    meta, records = (None, {}) if restart else read_predictions(out)
    if meta is not None and (meta.get("manifest_sha256"), meta.get("quant")) != (ident["manifest_sha256"],
                                                                                 ident["quant"]):
        raise ScienceQAError(f"{out} holds answers of another bundle or quant ({meta.get('bundle')}, "
                             f"{meta.get('quant')}); pass another -o, or --restart to start over")
    if meta is not None and meta.get("split") != split:
        raise ScienceQAError(f"{out} holds answers for split {meta.get('split')!r}, not {split!r}; pass another -o")
    if meta is not None and (meta.get("prompt", EVAL_FORMAT), meta.get("instruction", SINGLE_PRED_PROMPT)) != (
            fmt, instruction):
        raise ScienceQAError(f"{out} holds answers to another prompt ({meta.get('prompt')}, instruction "
                             f"{meta.get('instruction')!r}); pass another -o, or --restart to start over")
    todo = [(p, *_needs(p, records, judge_id)) for p in problems]
    todo = [(p, a, j) for p, a, j in todo if a or j]
    writer = _Appender(out, fresh=restart or meta is None)
    if restart or meta is None:
        meta = {"kind": "meta", "suite": "scienceqa", "split": split, **ident, "prompt": fmt,
                "instruction": instruction, "decoding": "greedy", "max_tokens": max_tokens}
        writer.write(meta)
    try:
        if todo:
            _ask_all(release, todo, records, writer, judge, judge_id, model, device, threads, quant, max_tokens,
                     progress, len(problems), lambda p: question_prompt(p, fmt, instruction))
    finally:
        writer.close()
    return problems, meta, records


def _ask_all(release: Release, todo: list[tuple[Problem, bool, bool]], records: dict[str, dict[str, Any]],
             writer: _Appender, judge: Judge | None, judge_id: str | None, model: str | Path | None, device: str,
             threads: int | None, quant: str | None, max_tokens: int, progress: Progress | None, total: int,
             ask: Callable[[Problem], str]) -> None:
    import contextlib

    from llava_local.errors import ContextOverflow

    done0 = total - len(todo)
    needs_model = any(a for _, a, _ in todo)
    with contextlib.ExitStack() as stack:
        session = None
        if needs_model:
            from llava_local import ChatSession, GenerationConfig, RuntimeConfig, open_model

            # No disk cache: thousands of benchmark images do not belong in the user's embedding cache.
            config = RuntimeConfig(device=device, n_threads=threads, quant=quant, embedding_cache=False)
            m = stack.enter_context(open_model(None if model is None else str(model), config))
            session = ChatSession(m, generation=GenerationConfig(temperature=0.0, max_tokens=max_tokens))
        t0 = time.monotonic()
        for k, (p, ask_llava, ask_judge) in enumerate(todo):
            rec = dict(records.get(p.pid) or {})
            if ask_llava:
                assert session is not None
                prompt = ask(p)
                text, error = _ask_one(session, release, p, prompt, ContextOverflow)
                img = image_path(release.base_dir, p)
                rec = {"kind": "answer", "question_id": p.pid,
                       "prompt": f"<image>\n{prompt}" if img is not None else prompt, "text": text}
                if error:
                    rec["error"] = error
            if ask_judge and judge is not None:
                first = judge.ask(p)
                second = None if agree(p, rec["text"], first) else judge.decide(p, rec["text"], first)
                rec["judge"] = {"model": judge_id, "first": first, "second": second}
            writer.write(rec)
            records[p.pid] = rec
            if progress:
                rate = (k + 1) / max(time.monotonic() - t0, 1e-9)
                left = (len(todo) - k - 1) / rate
                progress(done0 + k + 1, total, f"{rate * 60:.1f}/min, ~{left:.0f}s left")


def _ask_one(session: Any, release: Release, p: Problem, prompt: str, overflow: type[Exception]
             ) -> tuple[str, str | None]:
    from llava_local.events import Finished

    img = image_path(release.base_dir, p)
    if img is not None and not img.is_file():
        raise ScienceQAError(f"problem {p.pid}: image {img} is missing; download images/ into the release folder")
    session.clear()
    text = ""
    try:
        for ev in session.ask(prompt, images=[img] if img is not None else []):
            if isinstance(ev, Finished):
                text = ev.text
    except overflow as e:
        return "", f"context overflow: {e}"
    return text.strip(), None


def scores(problems: list[Problem], records: dict[str, dict[str, Any]], fallback: str) -> dict[str, Tally]:
    per: dict[str, dict[str, int]] = {s: {} for s in SYSTEMS}
    for p in problems:
        rec = records.get(p.pid)
        if rec is None:
            continue
        for name, idx in systems(p, rec, fallback).items():
            per[name][p.pid] = idx
    return {name: tally(problems, pred) for name, pred in per.items() if pred}
