"""The synthetic world: determinism, rendering, teacher answers confirmed by the checker, checker catches lies."""

from __future__ import annotations

import random
import re

import pytest

from training.datagen.checker import check_answer, check_text, check_turns
from training.datagen.parse import parse_response
from training.datagen.render import render
from training.datagen.teacher import QTYPES, captions, group_phrase, kind_order, qa_pairs, respond, sample_qa
from training.datagen.world import COLOURS, Obj, Scene, WorldConfig, make_scene, scene_from_boxes


def _scene(*objs: tuple[str, str, str, int, int]) -> Scene:
    """Objects as (shape, colour, size, row, col), centred in their cells."""
    return Scene("t", tuple(Obj(s, c, z, r, k, (k + 0.5) / 3, (r + 0.5) / 3, 0.14 if z == "large" else 0.075)
                            for s, c, z, r, k in objs))


TWO = _scene(("circle", "red", "large", 0, 0), ("square", "blue", "small", 2, 2), ("square", "blue", "large", 1, 1))


def test_scenes_are_deterministic_and_independent_of_count():
    assert make_scene(7, 123) == make_scene(7, 123)
    assert make_scene(7, 123) != make_scene(7, 124)
    assert make_scene(7, 123) != make_scene(8, 123)
    cfg = WorldConfig(min_objects=2, max_objects=6)
    for i in range(200):
        s = make_scene(0, i, cfg)
        assert 2 <= len(s.objects) <= 6
        assert len({(o.row, o.col) for o in s.objects}) == len(s.objects)  # one object per cell
        for o in s.objects:
            x1, y1, x2, y2 = o.box
            assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1
            assert (min(int(o.cy * 3), 2), min(int(o.cx * 3), 2)) == (o.row, o.col)


def test_boxes_round_trip_to_the_same_facts():
    for i in range(300):
        s = make_scene(3, i)
        back = scene_from_boxes(s.key, s.boxes())
        assert back is not None
        assert [(o.shape, o.colour, o.size, o.row, o.col) for o in back.objects] == \
            [(o.shape, o.colour, o.size, o.row, o.col) for o in s.objects]
    assert scene_from_boxes("x", [{"category": "person", "bbox": [0.1, 0.1, 0.2, 0.2]}]) is None


def test_render_draws_each_object_in_its_colour():
    s = make_scene(0, 5)
    img = render(s, 96)
    assert img.size == (96, 96) and img.mode == "RGB"
    assert render(s, 96).tobytes() == img.tobytes()
    for o in s.objects:
        # the centre of a circle/square/diamond is inside the shape; a triangle's centroid sits lower
        px = img.getpixel((int(o.cx * 96), int((o.cy + (o.r / 3 if o.shape == "triangle" else 0)) * 96)))
        assert max(abs(a - b) for a, b in zip(px, COLOURS[o.colour])) < 30, (o, px)
    with pytest.raises(ValueError):
        render(s, 8)


def test_teacher_answers_for_all_types_pass_the_checker():
    n_claims = 0
    for i in range(400):
        s = make_scene(11, i)
        rng = random.Random(i)
        for rtype in ("conversation", "detail", "complex_reasoning"):
            turns = parse_response(rtype, respond(s, rtype, rng))
            r = check_turns(s, turns)
            assert r.ok, (rtype, s, turns, r.errors)
            n_claims += r.n_claims
        for qa in qa_pairs(s, rng):
            assert check_answer(s, qa.question, qa.sentence).ok, qa
        for c in captions(s, rng):
            assert check_text(s, c).ok and check_text(s, c).n_claims > 0, c
    assert n_claims > 5_000  # about 23 claims per scene


def test_group_phrase_lists_kinds_by_place_or_by_colour_then_shape():
    mixed = _scene(("diamond", "orange", "small", 0, 0), ("square", "purple", "large", 0, 1),
                   ("circle", "red", "small", 1, 1), ("square", "purple", "small", 2, 0),
                   ("circle", "purple", "large", 2, 2))
    # reading order: each kind where its first object is (row by row)
    by_place = "an orange diamond, two purple squares, a red circle and a purple circle"
    assert group_phrase(list(mixed.objects)) == by_place
    with kind_order("kind"):  # colours in COLOURS order, then shapes in SHAPES order, wherever they are
        want = "a red circle, a purple circle, two purple squares and an orange diamond"
        assert group_phrase(list(mixed.objects)) == want
        assert group_phrase(list(reversed(mixed.objects))) == want
        assert group_phrase(list(TWO.objects)) == "a red circle and two blue squares"
    assert group_phrase(list(mixed.objects)).startswith("an orange diamond")  # the block ends, the order with it
    with pytest.raises(ValueError, match="kind order 'size'"), kind_order("size"):
        pass


def test_qa_pairs_cover_every_eval_type_with_short_answers():
    seen = {}
    for i in range(50):
        s = make_scene(2, i)
        for qa in qa_pairs(s, random.Random(i)):
            seen.setdefault(qa.qtype, qa)
            if qa.qtype == "count":
                assert qa.answer.isdigit()
            if qa.qtype in ("relation", "existence"):
                assert qa.answer in ("yes", "no")
    assert set(seen) == set(QTYPES)
    rng = random.Random(0)
    assert sample_qa(TWO, rng, "colour").answer in ("red", "blue")
    q = [qa for qa in qa_pairs(TWO, rng, ("count",)) if "blue squares" in qa.question]
    assert q and q[0].answer == "2"


@pytest.mark.parametrize("question, answer", [
    ("How many blue squares are there?", "There are three blue squares."),
    ("What colour is the circle?", "The circle is green."),
    ("What shape is the red shape?", "The red shape is a square."),
    ("Where is the circle?", "The circle is in the bottom right corner."),
    ("Is the circle to the left of the large square?", "No, the circle is to the right of the large square."),
    ("Is there a green triangle in the image?", "Yes, there is a green triangle."),
    ("Is there a red circle in the image?", "No, there is no red circle."),
    ("Is the circle above the small square?", "No, the circle is above the small square."),
    ("Describe.", "In the center there is a small blue square."),
    ("Describe.", "A picture of two shapes: a red circle and two blue squares."),
    ("Are there more squares than circles in the image?",
     "There are two squares and one circle. So no, there are not more squares than circles."),
    ("If all the blue shapes were taken away, how many shapes would be left?",
     "There are three shapes in total, and two of them are blue. So two shapes would be left."),
    ("Which is higher up in the image, the circle or the small square?",
     "The circle is above the small square. So the small square is higher up."),
    ("Describe.", "The square is blue."),  # two squares: "the square" names no single object
])
def test_checker_rejects_false_claims(question, answer):
    r = check_answer(TWO, question, answer)
    assert not r.ok, (answer, r)


def _flip_yes_no(t: str) -> str:
    return t.replace("Yes,", "No,") if t.startswith("Yes") else t.replace("No,", "Yes,")


def _move(t: str) -> str:
    return t.replace("center", "top left corner") if "center" in t else t.split(" is ", 1)[0] + " is in the center."


LIES = {  # qtype → a function turning the teacher's true sentence into a false one
    "colour": lambda t: re.sub(r"is (\w+)\.$", lambda m: "is " + ("red" if m[1] != "red" else "blue") + ".", t),
    "count": lambda t: t.replace("There is one", "There are two").replace("There are no", "There is one"),
    "position": _move,
    "relation": _flip_yes_no,
    "existence": _flip_yes_no,
}


def test_checker_reads_negations_and_accepts_true_free_text():
    for text in ("There is not a green triangle.", "The picture has no green triangles.",
                 "A large red circle sits in the top left corner, and there are two blue squares.",
                 "The red circle is to the left of the large square."):
        r = check_text(TWO, text)
        assert r.ok and r.n_claims >= 1, (text, r)
    assert not check_text(TWO, "There is not a red circle.").ok


def test_checker_catches_mutated_teacher_answers():
    caught = total = 0
    for i in range(300):
        s = make_scene(5, i)
        rng = random.Random(i)
        for qtype in ("colour", "count", "position", "relation", "existence"):
            qa = sample_qa(s, rng, qtype)
            if qa is None:
                continue
            lie = LIES[qtype](qa.sentence)
            if lie == qa.sentence:
                continue
            total += 1
            caught += not check_answer(s, qa.question, lie).ok
    assert total > 500
    assert caught / total > 0.97, (caught, total)
