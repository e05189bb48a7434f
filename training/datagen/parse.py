"""Parse and validate LLM responses into LLaVA samples.

Contract: `parse_response(rtype, text)` returns the response's (question, answer) turns — for `detail` one
("", paragraph) turn — or raises `Rejected(reason, detail)` with a reason from `REJECT_REASONS`.
`make_sample(record, rtype, turns, request)` builds one LLaVA JSON sample with "<image>\\n" opening the
first human turn. `dedup_key(sample)` is the normalised text used for de-duplication.

The parser is lenient about layout (Question:/Answer:, "===" separators, markdown bold, numbering, answers
running over several lines) and strict about content: a refusal, a mention of the captions/boxes the
model was given, or an answer that is too short or too long is rejected, never repaired.
"""

from __future__ import annotations

import re

from .prompts import DETAIL_REQUESTS
from .records import ImageRecord

REJECT_REASONS = (
    "empty", "unparseable", "unbalanced", "too_few_turns", "too_many_turns", "too_short", "too_long",
    "mentions_context", "refusal", "garbled", "contradicts_scene", "duplicate", "backend_error",
)
MAX_CONVERSATION_PAIRS = 8
MIN_DETAIL_WORDS, MAX_DETAIL_WORDS = 12, 400
MAX_ANSWER_WORDS = 300

# "Q:", "Question 2:", "**A:**", "1. Q:": the marker and its decorations at the start of a line.
_MARKER = re.compile(
    r"^\s*(?:\d+[.)]\s*)?(?:\*\*|__)?(q|question|a|answer)\s*(?:\d+)?\s*(?:\*\*|__)?\s*[:：]\s*(?:\*\*)?",
    re.IGNORECASE)
_MENTIONS = re.compile(
    r"\b(bounding box(es)?|coordinates?|captions?|(given|provided) (description|context|information|annotations?))\b"
    r"|\[\s*0?\.\d+\s*,", re.IGNORECASE)
_REFUSAL = re.compile(r"\b(as an ai|i'?m sorry|i cannot|i can'?t see|i am unable|language model)\b", re.IGNORECASE)


class Rejected(Exception):
    """A response that cannot become a sample; `reason` is one of REJECT_REASONS."""

    def __init__(self, reason: str, detail: str = "") -> None:
        assert reason in REJECT_REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def _qa_items(text: str) -> list[tuple[str, str]]:
    """[("q"|"a", text)] from marker lines; continuation lines join the previous item."""
    items: list[list[str]] = []
    for line in text.splitlines():
        if re.fullmatch(r"\s*(=+|-+|\*+)\s*", line):
            continue
        m = _MARKER.match(line)
        if m:
            items.append([m.group(1)[0].lower(), line[m.end():].strip()])
        elif items and line.strip():
            items[-1][1] += " " + line.strip()
        elif line.strip():
            raise Rejected("unparseable", f"text outside Q:/A: lines: {line.strip()[:40]!r}")
    return [(k, " ".join(v.split())) for k, v in items]


_GARBLED = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ufffd]")  # control characters, U+FFFD from bad bytes


def _check_content(texts: list[str]) -> None:
    for t in texts:
        if _GARBLED.search(t):
            raise Rejected("garbled", repr(t[:40]))
        if _REFUSAL.search(t):
            raise Rejected("refusal", t[:60])
        if _MENTIONS.search(t):
            raise Rejected("mentions_context", t[:60])


def _pairs(text: str) -> list[tuple[str, str]]:
    items = _qa_items(text)
    if not items:
        raise Rejected("unparseable", "no Q:/A: lines")
    pairs = []
    for i in range(0, len(items), 2):
        chunk = items[i:i + 2]
        if len(chunk) != 2 or chunk[0][0] != "q" or chunk[1][0] != "a":
            raise Rejected("unbalanced", "questions and answers do not alternate")
        q, a = chunk[0][1], chunk[1][1]
        if len(q.split()) < 2 or not a:
            raise Rejected("too_short", "empty question or answer")
        if len(a.split()) > MAX_ANSWER_WORDS:
            raise Rejected("too_long", f"answer of {len(a.split())} words")
        pairs.append((q, a))
    return pairs


def parse_response(rtype: str, text: str) -> list[tuple[str, str]]:
    """The (question, answer) turns of a response; raises `Rejected`."""
    text = re.sub(r"^```\w*\s*|\s*```$", "", (text or "").strip())
    if not text:
        raise Rejected("empty")
    if rtype == "detail":
        if _MARKER.match(text):
            raise Rejected("unparseable", "a Q:/A: list where a paragraph was asked for")
        para = " ".join(text.split())
        n = len(para.split())
        if n < MIN_DETAIL_WORDS:
            raise Rejected("too_short", f"{n} words")
        if n > MAX_DETAIL_WORDS:
            raise Rejected("too_long", f"{n} words")
        _check_content([para])
        return [("", para)]
    pairs = _pairs(text)
    if rtype == "complex_reasoning" and len(pairs) != 1:
        raise Rejected("too_many_turns", f"{len(pairs)} questions, 1 asked for")
    if rtype == "conversation":
        seen, unique = set(), []
        for q, a in pairs:  # a model repeating itself: keep the first occurrence of each question
            k = normalise(q)
            if k not in seen:
                seen.add(k)
                unique.append((q, a))
        pairs = unique
        if len(pairs) > MAX_CONVERSATION_PAIRS:
            raise Rejected("too_many_turns", f"{len(pairs)} pairs")
    _check_content([t for qa in pairs for t in qa])
    return pairs


def normalise(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def make_sample(record: ImageRecord, rtype: str, turns: list[tuple[str, str]], pick: int) -> dict:
    """One LLaVA sample; `pick` (a seeded integer) chooses the detail request."""
    if rtype == "detail":
        turns = [(DETAIL_REQUESTS[pick % len(DETAIL_REQUESTS)], turns[0][1])]
    conv = []
    for i, (q, a) in enumerate(turns):
        conv.append({"from": "human", "value": ("<image>\n" + q) if i == 0 else q})
        conv.append({"from": "gpt", "value": a})
    return {"id": f"{record.id}-{rtype}", "image": record.image, "conversations": conv}


def dedup_key(sample: dict, per_image: bool) -> str:
    """Normalised conversation text; with `per_image`, only repeats for the same image count."""
    turns = sample["conversations"]
    if sample["id"].endswith("-detail"):  # the request is ours (a seeded pick); only the answer is generated
        turns = turns[1:]
    text = normalise(" ".join(t["value"].replace("<image>", "") for t in turns))
    return f"{sample['image']}\0{text}" if per_image else text
