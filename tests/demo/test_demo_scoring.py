"""The eval's answer checking and question set: deterministic, held out, and strict enough to fail."""

from __future__ import annotations

import pytest

from training.datagen.teacher import QA
from training.datagen.world import Obj, Scene
from training.demo.corpus import QTYPES, SHORT_ANSWER, make_scenes, prompt_of
from training.demo.evaluate import eval_set, inventory, score

SCENE = Scene("t", (
    Obj("circle", "red", "small", 0, 0, 0.16, 0.16, 0.075),
    Obj("circle", "red", "large", 0, 2, 0.83, 0.16, 0.14),
    Obj("square", "blue", "small", 2, 1, 0.5, 0.83, 0.075),
))


@pytest.mark.parametrize("pred, ok", [
    ("red", True), ("Red.", True), (" red ", True), ("blue", False), ("red circle", False), ("", False),
])
def test_short_answers_match_exactly_after_normalising(pred, ok):
    assert score(QA("What colour is the square?", "red", "colour", "The square is red."), pred, SCENE) is ok


@pytest.mark.parametrize("pred, ok", [
    ("Two red circles and a blue square on a gray background.", True),
    ("A picture of three shapes: two red circles and a blue square.", True),
    ("An image with a blue square and two red circles.", True),   # order does not matter
    ("A picture of two shapes: two red circles.", False),          # a missing object
    ("An image with two red circles, a blue square and a green diamond.", False),  # an invented one
    ("A picture of four shapes: two red circles and a blue square.", False),  # a false count claim
    ("Shapes.", False),
])
def test_descriptions_need_the_full_inventory_and_no_false_claim(pred, ok):
    qa = QA("Describe the image briefly.", "", "description", "")
    assert score(qa, pred, SCENE) is ok


def test_inventory_reads_numbers_and_articles():
    assert inventory("an orange diamond, three green squares and 2 red circles") == {
        ("orange", "diamond"): 1, ("green", "square"): 3, ("red", "circle"): 2}


def test_eval_set_is_deterministic_covers_every_type_and_is_held_out():
    a, b = eval_set(20, 1000), eval_set(20, 1000)
    assert [(i.scene, i.qa, i.png) for i in a] == [(i.scene, i.qa, i.png) for i in b]
    assert {i.qa.qtype for i in a} == set(QTYPES)
    train = {s.objects for s in make_scenes(0, 50)}
    assert not any(i.scene.objects in train for i in a)  # jittered positions: held-out scenes never repeat


def test_short_answer_prompts_carry_llava_15_suffix():
    assert prompt_of(QA("How many circles are there?", "2", "count", "")).endswith("\n" + SHORT_ANSWER)
    assert prompt_of(QA("Describe the image briefly.", "x", "description", "")) == "Describe the image briefly."


def test_the_teachers_own_answers_score_perfectly():
    items = eval_set(60, 1000)
    assert all(score(i.qa, i.qa.answer, i.scene) for i in items)
    # and a wrong scene's answers do not: the check looks at the scene, not at the answer's form
    other = eval_set(60, 1001)
    descriptions = [(i, j) for i, j in zip(items, other, strict=False) if i.qa.qtype == j.qa.qtype == "description"]
    assert sum(score(i.qa, j.qa.answer, i.scene) for i, j in descriptions) < len(descriptions) / 4
