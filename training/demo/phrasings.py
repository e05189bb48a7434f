"""Held-out phrasings: the questions a new user types, written apart from the teacher's and never trained on.

Contract:
- `HELDOUT_ASK` is a phrasing table for `teacher.sample_qa(..., ask=HELDOUT_ASK)`: per question type, templates in
  the ways people ask (American and British spelling, contractions, lower case without a question mark, "can you
  tell me…", "is there … in this picture") that share no template with the training data (a test checks the
  generated training questions). The canonical answer is the teacher's, so only the wording changes.
- `score_natural(qa, question, prediction, scene)` scores an answer to such a question the way a person would read
  it, since no "answer with a single word" instruction comes with it: yes/no questions must start with yes or no;
  a colour, shape, count or place is right when it is the only one the answer names (those named in the question
  itself aside); a description is scored as in `evaluate.score` (the scene's inventory, no false claim).
"""

from __future__ import annotations

import re

from training.datagen import teacher
from training.datagen.world import COLOURS, NUMBER_WORDS, SHAPES, Scene

# {ref}: a unique noun phrase ("small circle"); existence: with its article ("a red circle"); count: plural noun.
HELDOUT_ASK: teacher.Phrasings = {
    "colour": ("what color is the {ref}", "What's the color of the {ref}?", "Can you tell me what colour the {ref} is?",
               "which color does the {ref} have?"),
    "shape": ("what shape's the {ref}?", "Can you tell me the shape of the {ref}?", "what is the {ref} shaped like",
              "What sort of shape is the {ref}?"),
    "position": ("where's the {ref}?", "Where can I find the {ref}?", "can you tell me where the {ref} is",
                 "Whereabouts is the {ref} in the picture?"),
    "count": ("how many {ref} do you see", "How many {ref} can you count?", "can you tell me how many {ref} there are?",
              "What's the number of {ref} in this picture?"),
    "existence": ("is there {ref} in this picture", "Can you see {ref}?", "Does the image have {ref} in it?",
                  "any chance there's {ref} here?"),
    "relation": ("is the {a} located {rel} the {b}", "Would you say the {a} is {rel} the {b}?",
                 "Is it true that the {a} is {rel} the {b}?"),
    "description": ("What's in this picture?", "can you describe this image", "Tell me what you see.",
                    "What does this picture show?"),
}

# regions as the teacher names them, longest first so "top left" wins over "top" and "left"
REGIONS = ("top left", "top right", "bottom left", "bottom right", "center", "top", "bottom", "left", "right")
_REGION_WORDS = {"centre": "center", "middle": "center"}
_NUMBERS = {w: i for i, w in enumerate(NUMBER_WORDS)} | {"zero": 0, "none": 0}


def normalize(text: str) -> str:
    """Lower case, punctuation and extra spaces removed: how templates are compared."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _words(text: str) -> list[str]:
    return normalize(text).split()


def _named(text: str, vocabulary: tuple[str, ...]) -> set[str]:
    """Which words of `vocabulary` (or their plurals) `text` names."""
    words = set(_words(text))
    return {v for v in vocabulary if v in words or f"{v}s" in words}


def regions_named(text: str) -> set[str]:
    """The image regions `text` names ("in the top left corner" → {"top left"}), each word used once."""
    s = " ".join(_REGION_WORDS.get(w, w) for w in _words(text))
    found = set()
    for region in REGIONS:
        pattern = rf"\b{region}\b"
        if re.search(pattern, s):
            found.add(region)
            s = re.sub(pattern, " ", s)
    return found


def numbers_named(text: str) -> set[int]:
    words = _words(text)
    out = {int(w) for w in words if w.isdigit()} | {_NUMBERS[w] for w in words if w in _NUMBERS}
    if words[:3] in (["there", "are", "no"], ["there", "is", "no"]) or "no" in words[:1]:
        out.add(0)
    return out


def score_natural(qa: teacher.QA, question: str, prediction: str, scene: Scene) -> bool:
    """Is `prediction` a right answer to `question` (a held-out wording of `qa`) about `scene`?"""
    if qa.qtype == "description":
        from .evaluate import score  # the same inventory + checker rule as the teacher split

        return score(qa, prediction, scene)
    words = _words(prediction)
    if qa.qtype in ("relation", "existence"):
        return bool(words) and words[0] == qa.answer
    if qa.qtype == "colour":
        return _named(prediction, COLOURS) - _named(question, COLOURS) == {qa.answer}
    if qa.qtype == "shape":
        return _named(prediction, SHAPES) - _named(question, SHAPES) == {qa.answer}
    if qa.qtype == "count":
        return numbers_named(prediction) == {int(qa.answer)}
    if qa.qtype == "position":
        return regions_named(prediction) - regions_named(question) == {qa.answer}
    raise ValueError(f"unknown question type {qa.qtype!r}")

