"""The checker: confirm free-text answers against a symbolic scene.

Contract: `check_text(scene, text)` reads English sentences, extracts every claim it understands and tests
each against the scene, returning `CheckResult(n_claims, errors)`; `ok` means no claim is false. It does
not trust the teacher: it parses text with its own patterns, so it also checks answers an LLM wrote about
a synthetic scene. Claims it reads (case-insensitive; "desc" = [size] [colour] shape|shape|object):

- counts            "two red circles", "no green squares", "three shapes", "two of them are red"
- existence         "a blue square", "an orange diamond"
- unique reference  "the red circle" must name exactly one object
- attributes        "the circle is red", "the red shape is a circle"
- location          "the X is in the top left corner", "at the bottom there is a Y", "a Y is on the left side"
- relations         "the X is to the left of / to the right of / above / below the Y"
- yes/no openings to existence and relation questions ("Is there a red circle?" "No, ...")
- conclusions of the teacher's complex-reasoning questions ("So two shapes would be left.", ...),
  recomputed from the question.

Sentences starting with "So"/"If" are conclusions or hypotheticals: their counts are not facts about the
scene, so only the conclusion rules read them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .world import CELL_OF_REGION, COLOURS, NUMBER_WORDS, SHAPES, Obj, Scene

_NUM = r"(?:no|one|two|three|four|five|six|seven|eight|nine|\d+)"
_COL = "|".join(COLOURS)
_SHAPE = "|".join(SHAPES)
_REGION = r"top left|top right|bottom left|bottom right|top|bottom|left|right|center|centre|middle"
_VERB = r"(?:is|are|sits|lies|can be seen|appears)"


def _desc(p: str) -> str:
    """A noun phrase with named groups prefixed `p`: [size] [colour] noun[s]."""
    return (rf"(?:(?P<{p}size>small|large|big)\s+)?(?:(?P<{p}colour>{_COL})\s+)?"
            rf"(?P<{p}noun>{_SHAPE}|shape|object)(?P<{p}pl>s)?\b")


_D, _D2 = _desc("a"), _desc("b")
_PATTERNS = {
    "count": re.compile(rf"\b(?P<num>{_NUM})\s+{_D}"),
    "of_them": re.compile(rf"\b(?P<num>{_NUM}|all) of them (?:is|are) (?P<col>{_COL})\b"),
    "exists": re.compile(rf"\b(?:a|an)\s+{_D}"),
    "the": re.compile(rf"\bthe\s+{_D}"),
    "attr_colour": re.compile(rf"\bthe\s+{_D} is (?P<col>{_COL})\b"),
    "attr_shape": re.compile(rf"\bthe\s+{_D} is (?:a|an) (?P<shape>{_SHAPE})\b"),
    "located_after": re.compile(rf"\b(?P<q>a|an|the|{_NUM})\s+{_D} {_VERB} (?:in|at|on) the (?P<region>{_REGION})\b"),
    "located_before": re.compile(
        rf"\b(?:in|at|on) the (?P<region>{_REGION})(?: corner| side)?(?: of the (?:image|picture))?,? "
        rf"there (?:is|are) (?P<q>a|an|{_NUM})\s+{_D}"),
    "relation": re.compile(
        rf"\bthe\s+{_D} is (?:directly )?(?P<rel>to the left of|to the right of|above|below) the\s+{_D2}"),
}
_CONCLUSIONS = [  # (question pattern, rule name)
    (re.compile(rf"if all the (?P<col>{_COL}) shapes were taken away|if every (?P<col2>{_COL}) shape were removed"),
     "left_after_removal"),
    (re.compile(rf"are there more (?P<s1>{_SHAPE})s than (?P<s2>{_SHAPE})s"), "more_than"),
    (re.compile(rf"which is higher up in the image, the\s+{_D} or the\s+{_D2}"), "higher"),
    (re.compile(r"which colou?r appears most often"), "most_colour"),
]


@dataclass(frozen=True)
class CheckResult:
    """How many claims were read, and the false ones (empty = all true)."""

    n_claims: int
    errors: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.errors

    def __add__(self, other: CheckResult) -> CheckResult:
        return CheckResult(self.n_claims + other.n_claims, self.errors + other.errors)


def _num(word: str) -> int:
    return NUMBER_WORDS.index(word) if word in NUMBER_WORDS else int(word)


def _filter(m: re.Match, p: str) -> dict | None:
    """The attribute filter of a matched noun phrase; None for a bare "shape"/"object" (no constraint)."""
    size, colour, noun = m.group(f"{p}size"), m.group(f"{p}colour"), m.group(f"{p}noun")
    f = {}
    if size:
        f["size"] = "large" if size == "big" else size
    if colour:
        f["colour"] = colour
    if noun in SHAPES:
        f["shape"] = noun
    return f


def _find(scene: Scene, m: re.Match, p: str, cell: tuple[int, int] | None = None) -> list[Obj]:
    return scene.matching(cell=cell, **_filter(m, p))


def _referent(scene: Scene, m: re.Match, p: str, errors: list[str]) -> Obj | None:
    found = _find(scene, m, p)
    if len(found) != 1:
        errors.append(f"'{m.group(0)}' matches {len(found)} objects")
        return None
    return found[0]


def _sentence_claims(scene: Scene, s: str, errors: list[str]) -> int:
    n = 0
    total = len(scene.objects)
    for m in _PATTERNS["count"].finditer(s):
        n += 1
        got, want = len(_find(scene, m, "a")), _num(m.group("num"))
        if got != want:
            errors.append(f"'{m.group(0)}' but there are {got}")
    for m in _PATTERNS["of_them"].finditer(s):
        n += 1
        got = len(scene.matching(colour=m.group("col")))
        want = total if m.group("num") == "all" else _num(m.group("num"))
        if got != want:
            errors.append(f"'{m.group(0)}' but {got} are {m.group('col')}")
    for m in _PATTERNS["exists"].finditer(s):
        n += 1
        if re.search(r"\b(not|n't|never|without)\s+(?:\w+\s+)?$", s[: m.start()]):
            # "there is not a red circle", "without a square": claims absence
            if _find(scene, m, "a"):
                errors.append(f"'{m.group(0)}' denied but present")
        elif m.group("apl") is None and not _find(scene, m, "a"):
            errors.append(f"'{m.group(0)}' is not in the scene")
    for m in _PATTERNS["the"].finditer(s):
        f = _filter(m, "a")
        if m.group("apl") is None and f and ("shape" in f or "colour" in f):
            n += 1
            _referent(scene, m, "a", errors)
    for m in _PATTERNS["attr_colour"].finditer(s):
        n += 1
        o = _referent(scene, m, "a", errors)
        if o is not None and o.colour != m.group("col"):
            errors.append(f"'{m.group(0)}' but it is {o.colour}")
    for m in _PATTERNS["attr_shape"].finditer(s):
        n += 1
        o = _referent(scene, m, "a", errors)
        if o is not None and o.shape != m.group("shape"):
            errors.append(f"'{m.group(0)}' but it is a {o.shape}")
    for key in ("located_after", "located_before"):
        for m in _PATTERNS[key].finditer(s):
            n += 1
            region = m.group("region").replace("centre", "center")
            cell = CELL_OF_REGION[region]
            q = m.group("q")
            if q == "the":
                o = _referent(scene, m, "a", errors)
                if o is not None and (o.row, o.col) != cell:
                    errors.append(f"'{m.group(0)}' but it is in the {o.region}")
                continue
            got = len(_find(scene, m, "a", cell))
            if (q in ("a", "an") and got < 1) or (q not in ("a", "an") and got != _num(q)):
                errors.append(f"'{m.group(0)}' but the {region} holds {got}")
    for m in _PATTERNS["relation"].finditer(s):
        n += 1
        a, b = _referent(scene, m, "a", errors), _referent(scene, m, "b", errors)
        if a is None or b is None:
            continue
        rel = m.group("rel")
        holds = {"to the left of": a.col < b.col, "to the right of": a.col > b.col,
                 "above": a.row < b.row, "below": a.row > b.row}[rel]
        if not holds:
            errors.append(f"'{m.group(0)}' is false")
    return n


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.lower().strip()) if s]


def check_text(scene: Scene, text: str) -> CheckResult:
    """Check every factual sentence of `text` against `scene`."""
    errors: list[str] = []
    n = 0
    for s in _sentences(text):
        if re.match(r"(so|if)\b", s):
            continue
        n += _sentence_claims(scene, s, errors)
    return CheckResult(n, tuple(errors))


def _conclusion(scene: Scene, question: str, answer: str) -> CheckResult:
    q, a = question.lower(), answer.lower()
    for pattern, rule in _CONCLUSIONS:
        m = pattern.search(q)
        if not m:
            continue
        errors: list[str] = []
        if rule == "left_after_removal":
            col = m.group("col") or m.group("col2")
            want = len(scene.objects) - len(scene.matching(colour=col))
            c = re.search(rf"\bso (?P<num>{_NUM}) shapes? would (?:be left|remain)", a)
            if not c or _num(c.group("num")) != want:
                errors.append(f"conclusion should be {want} shapes left")
        elif rule == "more_than":
            n1, n2 = len(scene.matching(shape=m.group("s1"))), len(scene.matching(shape=m.group("s2")))
            want = "yes" if n1 > n2 else "no"
            c = re.search(r"\bso (yes|no)\b", a)
            if not c or c.group(1) != want:
                errors.append(f"conclusion should be {want}")
        elif rule == "higher":
            x, y = _referent(scene, m, "a", errors), _referent(scene, m, "b", errors)
            c = re.search(rf"\bso the\s+{_D} is higher up", a)
            if x is not None and y is not None:
                higher = x if x.row < y.row else y if y.row < x.row else None
                said = _referent(scene, c, "a", errors) if c else None
                if higher is None or said is not higher:
                    errors.append("wrong object named as higher")
        elif rule == "most_colour":
            counts = sorted(((len(scene.matching(colour=c)), c) for c in COLOURS), reverse=True)
            c = re.search(rf"\bso (?P<col>{_COL}) appears most often", a)
            if counts[0][0] == counts[1][0] or not c or c.group("col") != counts[0][1]:
                errors.append(f"conclusion should be {counts[0][1]}")
        return CheckResult(1, tuple(errors))
    return CheckResult(0, ())


_YES_NO = {
    "exists": re.compile(
        rf"^(?:is there|do you see|does the (?:picture|image) contain|can you see) (?:a|an|any)\s+{_D}"),
    "relation": re.compile(
        rf"^is the\s+{_D} (?P<rel>to the left of|to the right of|above|below) the\s+{_D2}"),
}


def _yes_no(scene: Scene, question: str, answer: str) -> CheckResult:
    """A "Yes"/"No" opening must be the right answer to an existence or relation question."""
    said = re.match(r"\s*(yes|no)\b", answer.lower())
    q = question.lower().strip()
    if not said:
        return CheckResult(0, ())
    errors: list[str] = []
    if m := _YES_NO["exists"].search(q):
        want = "yes" if _find(scene, m, "a") else "no"
    elif m := _YES_NO["relation"].search(q):
        a, b = _referent(scene, m, "a", errors), _referent(scene, m, "b", errors)
        if a is None or b is None:
            return CheckResult(1, tuple(errors))
        want = "yes" if {"to the left of": a.col < b.col, "to the right of": a.col > b.col,
                         "above": a.row < b.row, "below": a.row > b.row}[m.group("rel")] else "no"
    else:
        return CheckResult(0, ())
    if said.group(1) != want:
        errors.append(f"answered {said.group(1)!r} to {question!r}; the answer is {want!r}")
    return CheckResult(1, tuple(errors))


def check_answer(scene: Scene, question: str, answer: str) -> CheckResult:
    """Check one answer: its sentences, a yes/no opening, and the conclusion of a question we can recompute."""
    return check_text(scene, answer) + _yes_no(scene, question, answer) + _conclusion(scene, question, answer)


def check_turns(scene: Scene, turns: list[tuple[str, str]], require_claims: bool = True) -> CheckResult:
    """Check a list of (question, answer); with `require_claims`, an answer with no readable claim fails."""
    total = CheckResult(0, ())
    for q, a in turns:
        r = check_answer(scene, q, a)
        if require_claims and r.n_claims == 0:
            r = r + CheckResult(0, (f"no checkable claim in answer {a[:60]!r}",))
        total = total + r
    return total
