"""The relation probe's classification: axis, and what reading order gives away (hand-made scenes)."""

from types import SimpleNamespace

import pytest

from training.datagen.teacher import QA
from training.datagen.world import Obj, Scene
from training.demo.probes.relation_axes import breakdown, classify


def obj(shape: str, colour: str, row: int, col: int) -> Obj:
    return Obj(shape, colour, "large", row, col, (col + 0.5) / 3, (row + 0.5) / 3, 0.1)


# red circle top right, blue square middle left, green circle bottom right
SCENE = Scene("t0", (obj("circle", "red", 0, 2), obj("square", "blue", 1, 0), obj("circle", "green", 2, 2)))


@pytest.mark.parametrize("question, expected", [
    # the red circle comes first in reading order but is the right one: the shortcut says the wrong thing
    ("Is the red circle to the left of the square?\nAnswer the question using a single word or phrase.",
     ("left-right", "disagrees")),
    ("is the square located to the right of the green circle", ("left-right", "agrees")),
    ("Would you say the square is above the red circle?", ("above-below", "agrees")),
    ("Is the green circle below the red circle?", ("above-below", "agrees")),  # one column
    ("Is it true that the green circle is to the right of the triangle?", ("left-right", "same-row")),
])
def test_classify(question, expected):
    scene = Scene("t1", (*SCENE.objects, Obj("triangle", "blue", "small", 2, 0, 0.17, 0.83, 0.05)))
    assert classify(scene, question) == expected


def test_unnamed_object_is_an_error():
    with pytest.raises(ValueError):
        classify(SCENE, "Is the purple diamond to the left of the square?")
    with pytest.raises(ValueError):
        classify(SCENE, "What colour is the square?")
    with pytest.raises(ValueError):  # one column: the teacher never asks this
        classify(SCENE, "Is the green circle to the right of the red circle?")


def test_breakdown_counts_only_relation_items():
    items = [SimpleNamespace(scene=SCENE, qa=QA("Is the red circle to the left of the square?", "no", "relation", "")),
             SimpleNamespace(scene=SCENE, qa=QA("Is the square above the red circle?", "no", "relation", "")),
             SimpleNamespace(scene=SCENE, qa=QA("What colour is the square?", "blue", "colour", ""))]
    result = SimpleNamespace(items=[{"type": "relation", "correct": False}, {"type": "relation", "correct": True},
                                    {"type": "colour", "correct": True}])
    assert breakdown(items, result) == {"above-below/agrees": (1, 1), "left-right/disagrees": (0, 1)}
