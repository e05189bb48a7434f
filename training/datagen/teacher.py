"""The rule-based teacher: correct answers, in varied phrasings, from a symbolic scene.

Contract:
- `qa_pairs(scene, rng)` yields `QA(question, answer, qtype, sentence)` for the evaluation question types
  (`QTYPES`): `answer` is short and canonical ("red", "circle", "2", "top left", "yes"), `sentence` is the
  same fact as a full sentence. Every fact is true of the scene; referring phrases name exactly one object.
- `respond(scene, rtype, rng)` writes a response for `conversation`, `detail` or `complex_reasoning` in the
  same text format the LLM prompts ask for (`Q: …` / `A: …` lines, or a paragraph), so teacher output goes
  through the same parser and validator as an LLM's.
- `captions(scene, rng)` gives COCO-style captions. They list the kinds of shape in reading order, or by colour and
  shape inside `with kind_order("kind"):` (`group_phrase`).

The checker (`checker.py`) parses these texts independently and confirms them against the scene.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from .world import COLOURS, SHAPES, Obj, Scene, number_word, plural, reading_order, referable

QTYPES = ("colour", "shape", "count", "position", "relation", "existence", "description")

# region → prepositional phrase; the checker accepts "in|at|on the <region>[ corner| side]".
LOCATION = {
    "top left": "in the top left corner", "top": "at the top", "top right": "in the top right corner",
    "left": "on the left side", "center": "in the center", "right": "on the right side",
    "bottom left": "in the bottom left corner", "bottom": "at the bottom", "bottom right": "in the bottom right corner",
}


Phrasings = dict[str, tuple[str, ...]]  # question type → templates

# question phrasings per type; {ref} is a unique noun phrase ("small circle").
ASK: Phrasings = {
    "colour": ("What colour is the {ref}?", "What is the colour of the {ref}?", "Which colour is the {ref}?"),
    "shape": ("What shape is the {ref}?", "Which shape is the {ref}?", "What kind of shape is the {ref}?"),
    "position": ("Where is the {ref}?", "Where is the {ref} in the image?", "In which part of the image is the {ref}?"),
    "count": ("How many {ref} are there?", "How many {ref} are in the image?", "Count the {ref} in the picture."),
    "existence": ("Is there {ref} in the image?", "Do you see {ref}?", "Does the picture contain {ref}?"),
    "description": ("Describe the image briefly.", "What is in this image?", "Give a short description of the image."),
}


# the yes/no relation question ({a}, {b}: unique noun phrases; {rel}: "to the left of", "above", ...)
RELATION_ASK: tuple[str, ...] = ("Is the {a} {rel} the {b}?",)


@dataclass(frozen=True)
class QA:
    """One question about a scene; `answer` short, `sentence` a full-sentence answer."""

    question: str
    answer: str
    qtype: str
    sentence: str


def article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _be(n: int) -> str:
    return "is" if n == 1 else "are"


def _ref_without(scene: Scene, obj: Obj, drop: str) -> str | None:
    """A unique phrase for `obj` that does not use attribute `drop` (so a question cannot give it away)."""
    options = {"colour": (("shape",), ("size", "shape")), "shape": (("colour",), ("size", "colour"))}[drop]
    for attrs in options:
        kw = {a: getattr(obj, a) for a in attrs}
        if len(scene.matching(**kw)) == 1:
            words = [kw[a] for a in ("size", "colour", "shape") if a in kw]
            return " ".join(words) if "shape" in kw else " ".join(words) + " shape"
    return None


# How a summary ("a red circle, two blue squares and an orange diamond") orders its kinds of shape:
# - "reading": each kind where its first object comes in reading order (captions, the base LLaMA's text, stage 1);
# - "kind": by colour (`COLOURS` order), then shape (`SHAPES` order), whatever their places. A description in reading
#   order makes the model keep track of which cells it has named, which it does badly; in this order each step asks
#   which colours are there, which it does well (recipe 10's stage 2; docs/demo-model-history.md, twelfth round).
KIND_ORDERS = ("reading", "kind")
_KIND_RANK = {(c, s): (i, j) for i, c in enumerate(COLOURS) for j, s in enumerate(SHAPES)}
_kind_order: ContextVar[str] = ContextVar("kind_order", default="reading")


@contextmanager
def kind_order(order: str) -> Iterator[None]:
    """Within the block, summaries (`group_phrase`, so captions and descriptions) list kinds in `order`."""
    if order not in KIND_ORDERS:
        raise ValueError(f"kind order {order!r}: use one of {', '.join(KIND_ORDERS)}")
    token = _kind_order.set(order)
    try:
        yield
    finally:
        _kind_order.reset(token)


def group_phrase(objects: list[Obj]) -> str:
    """"a red circle, two blue squares and an orange diamond", kinds in the current `kind_order`."""
    counts = list(Counter((o.colour, o.shape) for o in reading_order(objects)).items())  # first appearance
    if _kind_order.get() == "kind":
        counts.sort(key=lambda kind_n: _KIND_RANK[kind_n[0]])
    parts = [article(f"{c} {s}") if n == 1 else f"{number_word(n)} {c} {plural(s, n)}" for (c, s), n in counts]
    return join_and(parts)


def join_and(parts: Sequence[str]) -> str:
    """"a, b and c"; one part as it is; none: ""."""
    if len(parts) < 2:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def count_kinds(scene: Scene) -> list[dict[str, str]]:
    """The kinds of shape a count can ask about, as `Scene.matching` filters: all shapes, each shape, each colour,
    and each colour + shape in the scene."""
    kinds: list[dict[str, str]] = [{}, *({"shape": s} for s in SHAPES), *({"colour": c} for c in COLOURS)]
    return kinds + [{"colour": c, "shape": s} for c, s in sorted({(o.colour, o.shape) for o in scene.objects})]


def kind_noun(kind: dict[str, str]) -> str:
    """A `count_kinds` filter as a singular noun: "red circle", "circle", "red shape", "shape"."""
    return (f"{kind['colour']} " if "colour" in kind else "") + kind.get("shape", "shape")


def captions(scene: Scene, rng: random.Random, k: int = 3) -> list[str]:
    """`k` short captions, each a true summary of the scene."""
    n, things = len(scene.objects), group_phrase(list(scene.objects))
    templates = [
        f"{things[0].upper()}{things[1:]} on a gray background.",
        f"A picture of {number_word(n)} {plural('shape', n)}: {things}.",
        f"{number_word(n).capitalize()} {plural('shape', n)} on gray: {things}.",
        f"Simple shapes on a plain background: {things}.",
        f"An image with {things}.",
    ]
    return rng.sample(templates, k)


# Each maker shuffles its candidates with `rng` and builds them lazily, so `sample_qa` pays for one question.


def _shuffled(items: list, rng: random.Random) -> list:
    rng.shuffle(items)
    return items


def _colour_qa(scene: Scene, rng: random.Random, ask: Phrasings = ASK) -> Iterator[QA]:
    for o in _shuffled(list(scene.objects), rng):
        ref = _ref_without(scene, o, "colour")
        if ref:
            q = rng.choice(ask["colour"]).format(ref=ref)
            yield QA(q, o.colour, "colour", f"The {ref} is {o.colour}.")


def _shape_qa(scene: Scene, rng: random.Random, ask: Phrasings = ASK) -> Iterator[QA]:
    for o in _shuffled(list(scene.objects), rng):
        ref = _ref_without(scene, o, "shape")
        if ref:
            q = rng.choice(ask["shape"]).format(ref=ref)
            yield QA(q, o.shape, "shape", f"The {ref} is {article(o.shape)}.")


def _count_qa(scene: Scene, rng: random.Random, ask: Phrasings = ASK) -> Iterator[QA]:
    for f in _shuffled(count_kinds(scene), rng):
        n = len(scene.matching(**f))
        noun = kind_noun(f)
        q = rng.choice(ask["count"]).format(ref=noun + "s")
        yield QA(q, str(n), "count", count_sentence(noun, n))


def count_sentence(noun: str, n: int) -> str:
    """A count as the teacher says it: "There are two red circles.", "There are no squares."."""
    return f"There {_be(n)} {number_word(n)} {plural(noun, n)}." if n else f"There are no {noun}s."


def _position_qa(scene: Scene, rng: random.Random, ask: Phrasings = ASK) -> Iterator[QA]:
    for o, ref in _shuffled(referable(scene), rng):
        q = rng.choice(ask["position"]).format(ref=ref)
        yield QA(q, o.region, "position", f"The {ref} is {LOCATION[o.region]}.")


_RELATIONS = {  # name → (true when a vs b holds, the opposite relation)
    "to the left of": (lambda a, b: a.col < b.col, "to the right of"),
    "to the right of": (lambda a, b: a.col > b.col, "to the left of"),
    "above": (lambda a, b: a.row < b.row, "below"),
    "below": (lambda a, b: a.row > b.row, "above"),
}


def _relation_qa(scene: Scene, rng: random.Random, ask: Phrasings = ASK) -> Iterator[QA]:
    refs = referable(scene)
    # same column (row): neither left nor right (above nor below) holds, so we never ask
    cands = [(a, ra, b, rb, rel) for a, ra in refs for b, rb in refs if a is not b for rel in _RELATIONS
             if ((a.col != b.col) if rel.startswith("to the") else (a.row != b.row))]
    for a, ra, b, rb, rel in _shuffled(cands, rng):
        holds, opposite = _RELATIONS[rel]
        yes = holds(a, b)
        s = f"Yes, the {ra} is {rel} the {rb}." if yes else f"No, the {ra} is {opposite} the {rb}."
        # the training phrasing has one template and draws nothing (its data stays as it was); other tables pick one
        forms = ask.get("relation", RELATION_ASK)
        q = (forms[0] if len(forms) == 1 else rng.choice(forms)).format(a=ra, rel=rel, b=rb)
        yield QA(q, "yes" if yes else "no", "relation", s)


def _existence_qa(scene: Scene, rng: random.Random, ask: Phrasings = ASK) -> Iterator[QA]:
    present = sorted({(o.colour, o.shape) for o in scene.objects})
    absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
    # as many absent as present (plus one) candidates, so yes and no are about equally likely
    for c, s in _shuffled(present + rng.sample(absent, min(len(absent), len(present) + 1)), rng):
        yes = (c, s) in present
        q = rng.choice(ask["existence"]).format(ref=article(c + " " + s))
        sent = f"Yes, there is {article(c + ' ' + s)}." if yes else f"No, there is no {c} {s}."
        yield QA(q, "yes" if yes else "no", "existence", sent)


def _description_qa(scene: Scene, rng: random.Random, ask: Phrasings = ASK) -> Iterator[QA]:
    cap = captions(scene, rng, 1)[0]
    q = rng.choice(ask["description"])
    yield QA(q, cap, "description", cap)


_QA_MAKERS = {
    "colour": _colour_qa, "shape": _shape_qa, "count": _count_qa, "position": _position_qa,
    "relation": _relation_qa, "existence": _existence_qa, "description": _description_qa,
}


def qa_pairs(scene: Scene, rng: random.Random, qtypes: tuple[str, ...] = QTYPES) -> Iterator[QA]:
    """Every question the teacher can answer about `scene`, by type, in a seeded phrasing."""
    for t in qtypes:
        yield from _QA_MAKERS[t](scene, rng)


def sample_qa(scene: Scene, rng: random.Random, qtype: str, ask: Phrasings = ASK) -> QA | None:
    """One random question of `qtype` (None if the scene allows none, e.g. colour with no unique object), worded
    from `ask` (the teacher's own phrasings unless another table, e.g. the held-out evaluation's, is given)."""
    return next(_QA_MAKERS[qtype](scene, rng, ask), None)


# ---- the three response types -------------------------------------------------------------------------------


def _conversation(scene: Scene, rng: random.Random) -> str:
    types = list(QTYPES)
    rng.shuffle(types)
    want, pairs = rng.randint(3, 5), []
    for t in types:  # count, existence and description always have a question, so we reach 3
        if len(pairs) < want and (qa := sample_qa(scene, rng, t)) is not None:
            pairs.append(qa)
    return "\n".join(f"Q: {qa.question}\nA: {qa.sentence}" for qa in pairs)


def _detail(scene: Scene, rng: random.Random) -> str:
    n = len(scene.objects)
    opening = rng.choice([
        f"The image shows {number_word(n)} {plural('shape', n)} on a plain gray background.",
        f"There {_be(n)} {number_word(n)} {plural('shape', n)} in this picture, drawn on a gray background.",
        f"This is a simple picture with {number_word(n)} {plural('shape', n)} on a gray background.",
    ])
    sentences = [opening]
    for o in reading_order(scene.objects):
        loc, thing = LOCATION[o.region], article(o.phrase())
        sentences.append(rng.choice([
            f"{loc[0].upper()}{loc[1:]} there is {thing}.", f"{thing[0].upper()}{thing[1:]} is {loc}.",
            f"{thing[0].upper()}{thing[1:]} can be seen {loc}.",
        ]))
    for colour, k in Counter(o.colour for o in scene.objects).items():
        if k > 1:
            sentences.append(f"Altogether there are {number_word(k)} {colour} shapes.")
    refs = referable(scene)
    if len(refs) >= 2:
        (a, ra), (b, rb) = rng.sample(refs, 2)
        rel = "to the left of" if a.col < b.col else "to the right of" if a.col > b.col else (
            "above" if a.row < b.row else "below")
        sentences.append(f"The {ra} is {rel} the {rb}.")
    return " ".join(sentences)


def _complex(scene: Scene, rng: random.Random) -> str:
    options = []
    total = len(scene.objects)
    colour_counts = Counter(o.colour for o in scene.objects)
    c = rng.choice(sorted(colour_counts))
    k, left = colour_counts[c], total - colour_counts[c]
    options.append((
        rng.choice([f"If all the {c} shapes were taken away, how many shapes would be left?",
                    f"How many shapes would remain if every {c} shape were removed?"]),
        f"There {_be(total)} {number_word(total)} {plural('shape', total)} in total, and {number_word(k)} of them "
        f"{_be(k)} {c}. So {number_word(left)} {plural('shape', left)} would be left." if left else
        f"There {_be(total)} {number_word(total)} {plural('shape', total)} in total, and all of them are {c}. "
        f"So no shapes would be left.",
    ))
    s1, s2 = rng.sample(SHAPES, 2)
    n1, n2 = len(scene.matching(shape=s1)), len(scene.matching(shape=s2))
    verdict = f"So yes, there are more {s1}s." if n1 > n2 else f"So no, there are not more {s1}s than {s2}s."
    options.append((
        f"Are there more {s1}s than {s2}s in the image?",
        f"There {_be(n1)} {number_word(n1)} {plural(s1, n1)} and {number_word(n2)} {plural(s2, n2)}. {verdict}",
    ))
    refs = [(o, r) for o, r in referable(scene)]
    pairs = [(a, ra, b, rb) for a, ra in refs for b, rb in refs if a.row < b.row]
    if pairs:
        a, ra, b, rb = rng.choice(pairs)
        if rng.random() < 0.5:
            q = f"Which is higher up in the image, the {ra} or the {rb}?"
        else:
            q = f"Which is higher up in the image, the {rb} or the {ra}?"
        options.append((q, f"The {ra} is above the {rb}. So the {ra} is higher up."))
    top = colour_counts.most_common()
    if len(top) > 1 and top[0][1] > top[1][1]:
        listing = ", ".join(f"{number_word(n)} {col} {plural('shape', n)}" for col, n in top)
        options.append((
            "Which colour appears most often among the shapes?",
            f"Counting by colour, there are {listing}. So {top[0][0]} appears most often.",
        ))
    q, a = rng.choice(options)
    return f"Q: {q}\nA: {a}"


_RESPONDERS = {"conversation": _conversation, "detail": _detail, "complex_reasoning": _complex}


def respond(scene: Scene, rtype: str, rng: random.Random) -> str:
    """A response of type `rtype` in the LLM output format (see module docstring)."""
    return _RESPONDERS[rtype](scene, rng)
