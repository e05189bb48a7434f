"""Response parsing and validation, sample building, mixing and de-duplication (unit level)."""

from __future__ import annotations

from collections import Counter

import pytest

from training.datagen.parse import Rejected, dedup_key, make_sample, parse_response
from training.datagen.pipeline import Settings, plan_jobs
from training.datagen.prompts import DETAIL_REQUESTS, build_messages, symbolic_context
from training.datagen.records import Box, DatagenError, ImageRecord

REC = ImageRecord("42", "images/42.jpg", ("A cat on a mat.", "A gray cat."),
                  (Box("cat", (0.1, 0.2, 0.5, 0.9)), Box("mat", (0.0, 0.7123, 1.0, 1.0))))
DETAIL_OK = "A gray cat sits on a striped mat in the middle of a sunny room, looking towards the open window."


@pytest.mark.parametrize("rtype, text, turns", [
    ("conversation", "Q: What animal is this?\nA: A cat.\nQ: Where is it?\nA: On a mat.",
     [("What animal is this?", "A cat."), ("Where is it?", "On a mat.")]),
    ("conversation", "Question: What animal is this?\n===\nAnswer: A cat\nthat is gray.\n===\n",
     [("What animal is this?", "A cat that is gray.")]),
    ("conversation", "**Q1:** What animal is this?\n**A1:** A cat.\nQ: What animal is this?\nA: Still a cat.",
     [("What animal is this?", "A cat.")]),  # a repeated question is dropped
    ("complex_reasoning", "```\nQ: Why is the cat here?\nA: It likes the sun.\n```",
     [("Why is the cat here?", "It likes the sun.")]),
    ("detail", DETAIL_OK + "\n\nIt looks calm.", [("", DETAIL_OK + " It looks calm.")]),
])
def test_parse_accepts(rtype, text, turns):
    assert parse_response(rtype, text) == turns


@pytest.mark.parametrize("rtype, text, reason", [
    ("conversation", "", "empty"),
    ("conversation", "Sure! Here is a conversation.", "unparseable"),
    ("conversation", "Q: What is it?\nQ: Where?", "unbalanced"),
    ("conversation", "A: A cat.\nQ: What?", "unbalanced"),
    ("conversation", "Q: What is it?\nA: A cat according to the caption.", "mentions_context"),
    ("conversation", "Q: Where is it?\nA: At [0.100, 0.200, 0.5, 0.9].", "mentions_context"),
    ("conversation", "Q: What is it?\nA: I'm sorry, I cannot see images.", "refusal"),
    ("conversation", "Q: What is it?\nA: A c\x07at.", "garbled"),
    ("conversation", "\n".join(f"Q: Question number {i}?\nA: Answer {i}." for i in range(9)), "too_many_turns"),
    ("complex_reasoning", "Q: Why here?\nA: Sun.\nQ: And then?\nA: Sleep.", "too_many_turns"),
    ("detail", "A cat.", "too_short"),
    ("detail", "word " * 500, "too_long"),
    ("detail", "Q: What is it?\nA: A cat.", "unparseable"),
    ("detail", DETAIL_OK + " The bounding boxes show it clearly.", "mentions_context"),
])
def test_parse_rejects(rtype, text, reason):
    with pytest.raises(Rejected) as e:
        parse_response(rtype, text)
    assert e.value.reason == reason


def test_symbolic_context_is_captions_then_boxes_with_three_decimals():
    assert symbolic_context(REC) == (
        "A cat on a mat.\nA gray cat.\n\ncat: [0.100, 0.200, 0.500, 0.900]\nmat: [0.000, 0.712, 1.000, 1.000]")
    msgs = build_messages("detail", symbolic_context(REC), shots=2)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert msgs[-1]["content"] == symbolic_context(REC)
    assert len(build_messages("conversation", "x", shots=0)) == 2


def test_samples_put_image_first_and_detail_uses_our_request():
    s = make_sample(REC, "conversation", [("What?", "A cat."), ("Where?", "On a mat.")], pick=3)
    assert s["id"] == "42-conversation" and s["image"] == "images/42.jpg"
    assert [t["from"] for t in s["conversations"]] == ["human", "gpt", "human", "gpt"]
    assert s["conversations"][0]["value"] == "<image>\nWhat?"
    assert "<image>" not in s["conversations"][2]["value"]
    d = make_sample(REC, "detail", [("", DETAIL_OK)], pick=5)
    assert d["conversations"][0]["value"] == "<image>\n" + DETAIL_REQUESTS[5 % len(DETAIL_REQUESTS)]
    d2 = make_sample(ImageRecord("43", "b.jpg", ()), "detail", [("", DETAIL_OK.upper())], pick=6)
    assert dedup_key(d, per_image=False) == dedup_key(d2, per_image=False)  # same answer, other request
    assert dedup_key(d, per_image=True) != dedup_key(d2, per_image=True)


def test_plan_follows_mix_weights_and_is_seeded():
    recs = [ImageRecord(str(i), f"{i}.jpg", ("c",)) for i in range(600)]
    settings = Settings(mix={"conversation": 3, "detail": 1, "complex_reasoning": 0}, seed=1)
    jobs = plan_jobs(recs, settings)
    counts = Counter(j.rtype for j in jobs)
    assert len(jobs) == 600 and counts["complex_reasoning"] == 0
    assert 0.68 < counts["conversation"] / 600 < 0.82
    assert [j.id for j in plan_jobs(recs, settings)] == [j.id for j in jobs]
    assert [j.rtype for j in plan_jobs(recs, Settings(mix=settings.mix, seed=2))] != [j.rtype for j in jobs]
    all3 = plan_jobs(recs[:5], Settings(per_image=3))
    assert [j.rtype for j in all3[:3]] == ["conversation", "detail", "complex_reasoning"]
    assert len({j.seed for j in all3}) == 15


@pytest.mark.parametrize("kwargs", [
    {"mix": {"chat": 1.0}}, {"mix": {"detail": 0.0}}, {"per_image": 4}, {"dedup": "maybe"},
    {"mix": {"detail": 1.0}, "per_image": 2},
])
def test_bad_settings_are_user_errors(kwargs):
    with pytest.raises(DatagenError):
        Settings(**kwargs)


def test_duplicate_image_ids_are_refused():
    with pytest.raises(DatagenError, match="twice"):
        plan_jobs([REC, REC], Settings())
