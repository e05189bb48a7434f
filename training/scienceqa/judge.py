"""A text-only LLM as the judge, and the paper's two ensembles with it.

Contract:
- `Judge(backend).ask(problem)` → the judge's own answer to the text-only question (the question, the hint as
  context, the options; it never sees the image), and `Judge.decide(problem, llava_text, first)` → the text of
  the second round: the judge gets the question, LLaVA's answer and its own, each with its reasoning, and
  answers again. The backend is any `training.datagen.backends` backend (`complete(Request) -> str`): a local
  GGUF through llama.cpp or an OpenAI-compatible endpoint, with that module's retries and timeouts. A backend
  that gives up (`retry.GaveUp`) becomes `JudgeError`, one line saying how to resume.
- `agree(problem, llava_text, first)` → whether a second round is needed: no when both answers read as the
  same valid letter (`extract`), yes otherwise (different letters, or either unreadable).
- `systems(problem, rec, fallback)` → predicted index per system for one finished question record:
  `LLaVA`; `judge` (the judge alone, text-only); `complement` (the paper's "GPT-4 complement": the judge's
  answer, and LLaVA's wherever the judge gives none it can be read — upstream `eval_science_qa_gpt4.py`);
  `judge ensemble` (the paper's "GPT-4 as the judge": where the two agree, that answer; where they differ, the
  judge's second answer, and LLaVA's when that second answer cannot be read — upstream
  `eval_science_qa_gpt4_requery.py`). Unreadable answers of the `LLaVA` and `judge` rows follow the scorer's
  fallback (`extract.FALLBACKS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llava_local.errors import LlavaLocalError

from .extract import choice_index, read, readable
from .prompts import render
from .release import OPTIONS, Problem

SYSTEMS = ("LLaVA", "judge", "complement", "judge ensemble")
JUDGE_SYSTEM = "You are a careful science teacher who answers multiple-choice questions."
FIRST_ASK = ("You cannot see any image that may come with the question; use the context and what you know. "
             "Reason briefly, then end with one sentence of the form \"The answer is X.\" where X is the letter "
             "of your choice.")
SECOND_ASK = ("Two answers were proposed for this question.\n"
              "Answer 1, from a model that looked at the image:\n{llava}\n"
              "Answer 2, your own earlier answer without the image:\n{first}\n"
              "Weigh both, then end with one sentence of the form \"The answer is X.\" where X is the letter of "
              "your final choice.")


class JudgeError(LlavaLocalError):
    """The judge backend failed (after its retries) or was set up wrongly."""


def question_block(problem: Problem) -> str:
    return render(problem, "CQM-A")[0]


def first_messages(problem: Problem) -> tuple[dict[str, str], ...]:
    return ({"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": f"{question_block(problem)}\n{FIRST_ASK}"})


def second_messages(problem: Problem, llava_text: str, first: str) -> tuple[dict[str, str], ...]:
    ask = SECOND_ASK.format(llava=llava_text.strip() or "(no answer)", first=first.strip() or "(no answer)")
    return ({"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": f"{question_block(problem)}\n{ask}"})


def _letter(text: str, n: int) -> str | None:
    letter, _ = read(text)
    return letter if letter is not None and letter in OPTIONS[:n] else None


def agree(problem: Problem, llava_text: str, first: str) -> bool:
    a = _letter(llava_text, len(problem.choices))
    return a is not None and a == _letter(first, len(problem.choices))


@dataclass
class Judge:
    backend: Any
    seed: int = 0

    def _complete(self, problem: Problem, messages: tuple[dict[str, str], ...]) -> str:
        from training.datagen.backends import Request
        from training.datagen.records import ImageRecord
        from training.datagen.retry import GaveUp

        req = Request(rtype="scienceqa", record=ImageRecord(problem.pid, "", ()), messages=messages, seed=self.seed)
        try:
            return self.backend.complete(req)
        except GaveUp as e:
            raise JudgeError(f"judge backend failed on problem {problem.pid} ({e}); run the same command again "
                             "to resume (finished questions are kept)") from None

    def ask(self, problem: Problem) -> str:
        return self._complete(problem, first_messages(problem))

    def decide(self, problem: Problem, llava_text: str, first: str) -> str:
        return self._complete(problem, second_messages(problem, llava_text, first))


def systems(problem: Problem, rec: dict[str, Any], fallback: str) -> dict[str, int]:
    """Predicted index per system for a question record ({"text": LLaVA's answer, "judge": {...} or absent})."""
    n, key = len(problem.choices), problem.pid
    ours, _ = choice_index(rec["text"], n, fallback, key)
    out = {"LLaVA": ours}
    j = rec.get("judge")
    if j is None:
        return out
    first_idx, first_how = choice_index(j["first"], n, fallback, key)
    out["judge"] = first_idx
    out["complement"] = first_idx if readable(first_how) else ours
    if j.get("second") is None:  # they agreed: no second round
        out["judge ensemble"] = first_idx
    else:
        second_idx, second_how = choice_index(j["second"], n, "wrong", key)
        out["judge ensemble"] = second_idx if readable(second_how) else ours
    return out


def judge_counts(problems: list[Problem], records: dict[str, dict[str, Any]]) -> dict[str, int]:
    """How the judge behaved: second rounds asked, and answers it gave that could not be read."""
    out = {"asked": 0, "second_rounds": 0, "first_unreadable": 0, "second_unreadable": 0}
    for p in problems:
        j = records.get(p.pid, {}).get("judge")
        if j is None:
            continue
        out["asked"] += 1
        out["first_unreadable"] += int(_letter(j["first"], len(p.choices)) is None)
        if j.get("second") is not None:
            out["second_rounds"] += 1
            out["second_unreadable"] += int(_letter(j["second"], len(p.choices)) is None)
    return out
