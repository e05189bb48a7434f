"""ScienceQA prompt formats: an input layout and an output layout, named like the paper's `QCM-LEA`.

Contract:
- A format is `INPUT-OUTPUT`: `INPUTS[input]` and `OUTPUTS[output]` are tables of templates over the fields
  `context`, `question`, `choices`, `answer` (the letter), `lecture`, `solution`. `FORMATS` lists every valid
  pair; `parse_format(name)` raises `ScienceQAError` for any other. The letters: C context, Q question, M the
  options, A the answer, L the lecture, E the explanation (the release's `solution`), P "print the parts on
  their own lines" (`LEPA`, LLaVA's converter default).
- `render(problem, fmt)` → (human text, gpt text) exactly as haotian-liu/LLaVA's converter builds them: the
  context is the hint ("N/A" when empty), choices read "(A) x (B) y", double spaces collapse to one, an empty
  trailing `BECAUSE:` is dropped, a leading "Question: " (input) and "Answer: " (output) are removed (and, unlike
  upstream, the space an empty lecture and solution leave before "The answer is").
- `question_prompt(problem, fmt="CQM-A")` → the single-prediction question of LLaVA's ScienceQA evaluation: the
  format's input followed by `SINGLE_PRED_PROMPT` on its own line (no `<image>` mark; the caller passes the
  image); `instruction=None` leaves the instruction out. Used by `eval scienceqa`.

Why the odd pairs: upstream's `AL` puts the *solution* after the answer and `AE` the *lecture*; we keep their
meaning so a format name means the same thing here and in papers that used upstream's converter.
"""

from __future__ import annotations

from .release import OPTIONS, Problem, ScienceQAError

SINGLE_PRED_PROMPT = "Answer with the option's letter from the given choices directly."

INPUTS: dict[str, str] = {
    "CQM": "Context: {context}\nQuestion: {question}\nOptions: {choices}\n",
    "QCM": "Question: {question}\nContext: {context}\nOptions: {choices}\n",
    # "upper bound" inputs that already contain the lecture and/or explanation
    "QCML": "Question: {question}\nContext: {context}\nOptions: {choices}\nBECAUSE: {lecture}\n",
    "QCME": "Question: {question}\nContext: {context}\nOptions: {choices}\nBECAUSE: {solution}\n",
    "QCMLE": "Question: {question}\nContext: {context}\nOptions: {choices}\nBECAUSE: {lecture} {solution}\n",
    "QCLM": "Question: {question}\nContext: {context}\nBECAUSE: {lecture}\nOptions: {choices}\n",
    "QCEM": "Question: {question}\nContext: {context}\nBECAUSE: {solution}\nOptions: {choices}\n",
    "QCLEM": "Question: {question}\nContext: {context}\nBECAUSE: {lecture} {solution}\nOptions: {choices}\n",
}

OUTPUTS: dict[str, str] = {
    "A": "Answer: The answer is {answer}.",
    "AL": "Answer: The answer is {answer}. BECAUSE: {solution}",
    "AE": "Answer: The answer is {answer}. BECAUSE: {lecture}",
    "ALE": "Answer: The answer is {answer}. BECAUSE: {lecture} {solution}",
    "AEL": "Answer: The answer is {answer}. BECAUSE: {solution} {lecture}",
    "LA": "Answer: {lecture} The answer is {answer}.",
    "EA": "Answer: {solution} The answer is {answer}.",
    "LEA": "Answer: {lecture} {solution} The answer is {answer}.",
    "ELA": "Answer: {solution} {lecture} The answer is {answer}.",
    "LEPA": "",  # built by _lepa: optional LECTURE:/SOLUTION: lines, "###", then "ANSWER: X."
}

FORMATS: tuple[str, ...] = tuple(f"{i}-{o}" for i in INPUTS for o in OUTPUTS)
EVAL_FORMAT = "CQM-A"  # LLaVA-1.5's ScienceQA question file (llava_test_CQM-A.json)
TRAIN_FORMAT = "QCM-LEA"  # the paper's fine-tuning data (finetune_sqa.sh: llava_train_QCM-LEA.json)


def parse_format(name: str) -> tuple[str, str]:
    inp, _, out = name.partition("-")
    if inp not in INPUTS or out not in OUTPUTS:
        raise ScienceQAError(f"unknown prompt format {name!r}; inputs {', '.join(INPUTS)} and outputs "
                             f"{', '.join(OUTPUTS)}, e.g. QCM-LEA (training) or CQM-A (evaluation)")
    return inp, out


def choices_text(problem: Problem) -> str:
    return " ".join(f"({OPTIONS[i]}) {c}" for i, c in enumerate(problem.choices))


def fields(problem: Problem) -> dict[str, str]:
    return {"context": problem.hint.strip() or "N/A", "question": problem.question, "choices": choices_text(problem),
            "answer": OPTIONS[problem.answer], "lecture": problem.lecture, "solution": problem.solution}


def _lepa(f: dict[str, str]) -> str:
    out = f"LECTURE: {f['lecture']}\n" if f["lecture"].strip() else ""
    out += f"SOLUTION: {f['solution']}\n" if f["solution"].strip() else ""
    return out + f"###\nANSWER: {f['answer']}."


def _tidy(text: str) -> str:
    text = text.replace("  ", " ").strip()
    if text.endswith("BECAUSE:"):  # an empty lecture/solution leaves a dangling marker
        text = text.replace("BECAUSE:", "").strip()
    return text


def render(problem: Problem, fmt: str) -> tuple[str, str]:
    """(human text, gpt text) of `problem` in format `fmt`, without the `<image>` mark."""
    inp, out = parse_format(fmt)
    f = fields(problem)
    human = _tidy(INPUTS[inp].format(**f))
    gpt = _tidy(_lepa(f) if out == "LEPA" else OUTPUTS[out].format(**f))
    if human.startswith("Question: "):
        human = human.replace("Question: ", "")
    if gpt.startswith("Answer: "):
        gpt = gpt.replace("Answer: ", "")
    # Upstream keeps the space an empty lecture + solution leave ("Answer:  The answer is A." loses only its
    # prefix); we strip it, so the answer does not start with a lone space token.
    return human, gpt.strip()


def question_prompt(problem: Problem, fmt: str = EVAL_FORMAT, instruction: str | None = SINGLE_PRED_PROMPT) -> str:
    """The evaluation question (the image, if any, goes with it separately): the format's input, then the
    single-prediction instruction unless `instruction` is None (the paper's first evaluation asked QCM questions
    of a QCM-LEA model with no instruction and read "The answer is X." from its explanation)."""
    text = render(problem, fmt)[0]
    return text if instruction is None else text + "\n" + instruction
