"""The ways people ask: wordings the recipe trains on, and held-out ones written apart and never trained on.

Contract:
- `NATURAL_ASK` is the training side: per question type, many wordings besides the teacher's three (American and
  British spelling, contractions, synonyms, indirect requests), and `casual(question, rng)` adds the noise of typing
  (lower case, no question mark). `corpus` asks a share of its questions this way (`DataMix.natural`), half of them
  without the short-answer instruction, answered in a sentence that starts with "Yes"/"No" where it is a yes/no
  question.
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

import random
import re

from training.datagen import teacher
from training.datagen.world import COLOURS, NUMBER_WORDS, SHAPES, Scene

# {ref}: a unique noun phrase ("small circle"); existence: with its article ("a red circle"); count: plural noun.
HELDOUT_ASK: teacher.Phrasings = {
    "colour": ("what's the {ref}'s color", "What's the color of the {ref}?",
               "Can you tell me what colour the {ref} is?", "which color does the {ref} have?"),
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

# The training wordings: none is a held-out template, in either spelling (`canonical`; a test checks). The teacher's
# own table (`teacher.ASK`) stays as it is, so the teacher split of `eval synthetic` asks what it always asked.
NATURAL_ASK: teacher.Phrasings = {
    "colour": ("Tell me the color of the {ref}.", "Could you say which colour the {ref} is?",
               "I'd like to know the color of the {ref}.", "Which color has the {ref} got?", "what colour's the {ref}",
               "Name the colour of the {ref}.", "What color would you say the {ref} is?",
               "Do you know the colour of the {ref}?", "the {ref} is what color?",
               "Can you say what color the {ref} has?", "What colour is the {ref} painted?",
               "Which colour do you see on the {ref}?"),
    "shape": ("Do you know what shape the {ref} is?", "Which kind of shape is the {ref}?",
              "Name the shape of the {ref}.", "I'd like to know the shape of the {ref}.",
              "What form does the {ref} have?", "what shape is the {ref}",
              "Could you say what shape the {ref} has?", "The {ref} is which shape?",
              "How is the {ref} shaped?", "Can you name the shape of the {ref}?",
              "Which shape do you see for the {ref}?"),
    "position": ("Where is the {ref} located?", "Do you know where the {ref} is?",
                 "In what part of the picture is the {ref}?", "Where does the {ref} sit?",
                 "Where in the picture is the {ref}?", "I'd like to know where the {ref} is.",
                 "Could you say where the {ref} is?", "where is the {ref} placed", "Point out where the {ref} is.",
                 "Where can the {ref} be seen?", "Where would I look for the {ref}?",
                 "Where do you see the {ref}?", "Where in the image can I spot the {ref}?",
                 "Where's the {ref} placed in the image?", "Can you point to where the {ref} is?"),
    "count": ("How many {ref} are there in the picture?", "What's the count of {ref}?",
              "Do you know how many {ref} there are?", "Count how many {ref} there are.",
              "How many {ref} does the image show?", "number of {ref}?",
              "Could you say how many {ref} the picture has?",
              "how many {ref} are in the image", "I'd like to know how many {ref} there are.",
              "How many {ref} can be seen?", "How many {ref} do you notice?",
              "What number of {ref} does the picture have?", "Can you count the {ref} for me?"),
    "existence": ("Is there {ref} anywhere?", "Do you notice {ref}?", "Does this picture have {ref}?",
                  "Can I find {ref} here?", "Is there {ref} somewhere in the image?", "Does the picture show {ref}?",
                  "Could you check whether there's {ref}?", "is there {ref} in the image", "Do you spot {ref}?",
                  "Does the scene include {ref}?", "Can {ref} be seen in the picture?", "Has this image got {ref}?",
                  "Is {ref} present in the image?", "Would I find {ref} in this image?",
                  "Does the picture contain {ref} anywhere in it?", "Can you find {ref}?"),
    "relation": ("Is the {a} {rel} the {b}?", "Is the {a} placed {rel} the {b}?", "Does the {a} sit {rel} the {b}?",
                 "Do you think the {a} is {rel} the {b}?", "Is the {a} positioned {rel} the {b}?",
                 "Could you check if the {a} is {rel} the {b}?", "Check: is the {a} {rel} the {b}?",
                 "is the {a} {rel} the {b}", "Would the {a} be {rel} the {b}?",
                 "Can you tell if the {a} is {rel} the {b}?", "Is the {a} found {rel} the {b}?"),
    "description": ("Describe this picture.", "What do you see in the image?", "What can you see here?",
                    "Tell me about this image.", "Could you describe the picture?", "What's shown in the image?",
                    "describe the image", "Give me a short description of this picture.",
                    "Please describe the image for me.", "What is this a picture of?",
                    "Could you tell me about this picture?", "Write a description of the image.",
                    "I'd like a description of this picture.", "Say what this image contains.",
                    "Explain the picture to me."),
}

# one spelling per word, so that two templates that differ only in spelling compare equal
_SPELLINGS = {"color": "colour", "gray": "grey", "center": "centre"}


def canonical(text: str) -> str:
    """`normalize`d, British spelling: how a training wording is compared with a held-out one."""
    return " ".join(_SPELLINGS.get(w, w) for w in normalize(text).split())


def casual(question: str, rng: random.Random) -> str:
    """`question` as typed in a hurry, a third of the time each: all lower case; without its final punctuation."""
    if rng.random() < 1 / 3:
        question = question.lower()
    if rng.random() < 1 / 3:
        question = question.rstrip("?.")
    return question


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

