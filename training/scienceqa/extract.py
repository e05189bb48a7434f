"""The choice a model's answer names, read the way LLaVA's official ScienceQA scorer reads it.

Contract: `read_letter(text)` → the letter the text names, or None when none can be read; `choice_index(text,
n_choices, fallback, key)` → (index into the choices, how it was read). The rules, in order (from
haotian-liu/LLaVA `llava/eval/eval_science_qa.py`; facts, not code):

1. the whole answer is one option letter A-E ("B") → that letter;
2. the answer starts with a letter and ". " ("B. Paris") → that letter;
3. the pattern `The answer is ([A-Z]).` occurs exactly once → its letter. Upstream's pattern has an unescaped
   dot, so any character must follow the letter ("The answer is B," counts, "...is B" at the very end does
   not), it is case-sensitive ("the answer is b" is not read), and two occurrences read as nothing.

A letter that is read but names no choice of this question ("E" of three choices), or no letter at all, is
*unreadable*; what happens then is the `fallback` policy (`FALLBACKS`):
- `random` (default): a uniformly random choice, as the scorer of LLaVA's first release did (`get_pred_idx`
  returned `random.choice(range(len(choices)))`; the paper's 90.92% and the GPT-4 ensemble scripts used it).
  Upstream's draw is unseeded; ours is seeded by `key` (the problem id), so a rerun scores the same.
- `wrong`: the index -1, always counted wrong, as the scorer shipped with LLaVA-1.5 does.
`how` is one of `READ_HOW` ("letter", "prefix", "sentence", "outside", "none"), so tables can count the
unreadable answers.
"""

from __future__ import annotations

import random
import re

from .release import OPTIONS

FALLBACKS = ("random", "wrong")
READ_HOW = ("letter", "prefix", "sentence", "outside", "none")
_SENTENCE = re.compile(r"The answer is ([A-Z]).")  # the dot is a wildcard upstream too


def read(text: str) -> tuple[str | None, str]:
    """(letter or None, which rule read it: letter|prefix|sentence|none)."""
    if text in OPTIONS:
        return text, "letter"
    if len(text) >= 3 and text[0] in OPTIONS and text[1:3] == ". ":
        return text[0], "prefix"
    found = _SENTENCE.findall(text)
    if len(found) == 1:
        return found[0], "sentence"
    return None, "none"


def read_letter(text: str) -> str | None:
    return read(text)[0]


def choice_index(text: str, n_choices: int, fallback: str = "random", key: str = "") -> tuple[int, str]:
    """(0-based choice, how) for an answer to a question with `n_choices` choices; see the module docstring."""
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {FALLBACKS}")
    letter, how = read(text)
    if letter is not None and letter in OPTIONS[:n_choices]:
        return OPTIONS.index(letter), how
    how = "outside" if letter is not None else "none"
    if fallback == "wrong":
        return -1, how
    return random.Random(f"scienceqa-fallback:{key}").randrange(n_choices), how


def readable(how: str) -> bool:
    return how in ("letter", "prefix", "sentence")
