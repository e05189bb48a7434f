"""The held-out phrasing split of `llava-local eval synthetic`: its wordings never occur in the training data, its
scorer reads answers the way a person would, and the CLI reports both splits."""

from __future__ import annotations

import json
import random

import pytest

from training.datagen import teacher
from training.datagen.world import make_scene
from training.demo.corpus import LAYOUT_REQUESTS, SHORT_ANSWER, build_dataset
from training.demo.phrasings import (
    HELDOUT_ASK,
    NATURAL_ASK,
    canonical,
    numbers_named,
    regions_named,
    score_natural,
)


def _training_questions(tmp_path, n_scenes: int = 40) -> set[str]:
    """Every user turn of the recipe's data files (stage 1, curriculum, stage 2) for world 0's first scenes."""
    from training.demo.recipe_config import load_recipe

    cfg = load_recipe()
    build_dataset(tmp_path, [make_scene(cfg.world_seed, i) for i in range(n_scenes)], 32, cfg.world_seed, cfg.mix)
    out = set()
    for name in ("stage1.json", "stage2.json", "listing.json", "lookup.json", "relation.json"):
        for record in json.loads((tmp_path / name).read_text()):
            for turn in record["conversations"]:
                if turn["from"] == "human":
                    text = turn["value"].replace("<image>", "").replace(SHORT_ANSWER, "")
                    out.add(canonical(text))
    return out - {""}


def _asked_questions(ask: teacher.Phrasings, n_scenes: int, draws: int,
                     qtypes: tuple[str, ...] = teacher.QTYPES) -> set[str]:
    """`canonical` questions the teacher asks in `ask`'s wordings about world 0's first scenes, `draws` per type."""
    asked = set()
    for i in range(n_scenes):
        scene, rng = make_scene(0, i), random.Random(i)
        for _ in range(draws):
            for t in qtypes:
                if (qa := teacher.sample_qa(scene, rng, t, ask)) is not None:
                    asked.add(canonical(qa.question))
    return asked


def test_heldout_wordings_never_occur_in_the_training_data(tmp_path):
    trained = _training_questions(tmp_path)
    assert len(trained) > 200  # the data really was read
    asked = _asked_questions(HELDOUT_ASK, n_scenes=40, draws=6)
    assert len(asked) > 300
    assert not asked & trained, sorted(asked & trained)[:5]
    # and no template is a training template, whatever it is filled with
    trained_forms = [f for table in (teacher.ASK, NATURAL_ASK) for forms in table.values() for f in forms]
    teacher_forms = {canonical(f) for f in (*trained_forms, *teacher.RELATION_ASK, *LAYOUT_REQUESTS)}
    assert not {canonical(f) for forms in HELDOUT_ASK.values() for f in forms} & teacher_forms


def test_training_data_asks_in_natural_wordings(tmp_path):
    """The recipe's data does ask in people's wordings (American spelling, no instruction, sentence answers), so the
    held-out check above compares against a data set that has them."""
    from training.demo.recipe_config import load_recipe

    cfg = load_recipe()
    assert cfg.mix.natural > 0
    build_dataset(tmp_path, [make_scene(0, i) for i in range(40)], 32, 0, cfg.mix)
    turns = [(r["conversations"][k]["value"], r["conversations"][k + 1]["value"])
             for r in json.loads((tmp_path / "stage2.json").read_text()) for k in range(0, len(r["conversations"]), 2)]
    assert any(" color " in q for q, _ in turns)
    bare = [(q, a) for q, a in turns if SHORT_ANSWER not in q and a.split(",")[0] in ("Yes", "No")]
    assert len(bare) > 20  # yes/no questions without the instruction, answered "Yes, ..." / "No, ..."


def test_the_check_would_see_a_training_wording(tmp_path):
    """The same check on the teacher's own table finds overlaps, so the test above can fail."""
    trained = _training_questions(tmp_path, n_scenes=10)
    # the training scenes, a few draws each: a collision must not hang on one lucky draw
    asked = _asked_questions(teacher.ASK, n_scenes=10, draws=3, qtypes=("colour", "count", "existence"))
    assert asked & trained


QA = teacher.QA


@pytest.mark.parametrize("qa,question,prediction,ok", [
    (QA("", "orange", "colour", ""), "what color is the circle", "The circle is orange.", True),
    (QA("", "orange", "colour", ""), "what color is the red circle", "The red circle is orange.", True),
    (QA("", "orange", "colour", ""), "what color is the circle", "The circle is in the bottom right corner.", False),
    (QA("", "orange", "colour", ""), "what color is the circle", "Orange or red.", False),
    (QA("", "circle", "shape", ""), "what shape's the yellow shape?", "The yellow shape is a circle.", True),
    (QA("", "circle", "shape", ""), "what shape's the yellow shape?", "There is one yellow shape.", False),
    (QA("", "yes", "existence", ""), "is there a red circle in this picture", "Yes, there is a red circle.", True),
    (QA("", "yes", "existence", ""), "is there a red circle in this picture", "There is one red circle.", False),
    (QA("", "no", "relation", ""), "is the a above the b", "No, the a is below the b.", True),
    (QA("", "2", "count", ""), "how many circles do you see", "There are two circles.", True),
    (QA("", "2", "count", ""), "how many circles do you see", "2", True),
    (QA("", "0", "count", ""), "how many circles do you see", "There are no circles.", True),
    (QA("", "3", "count", ""), "how many circles do you see", "There are five shapes, two circles.", False),
    (QA("", "top left", "position", ""), "where's the circle?", "The circle is in the top left corner.", True),
    (QA("", "top", "position", ""), "where's the circle?", "The circle is at the top.", True),
    (QA("", "center", "position", ""), "where's the circle?", "It is in the middle.", True),
    (QA("", "left", "position", ""), "where's the circle?", "The circle is in the top left corner.", False),
])
def test_natural_scoring(qa, question, prediction, ok):
    assert score_natural(qa, question, prediction, make_scene(1000, 0)) is ok


def test_regions_and_numbers_named():
    assert regions_named("top left: a red circle. bottom: a square.") == {"top left", "bottom"}
    assert numbers_named("There are no shapes") == {0} and numbers_named("one, 3 and five") == {1, 3, 5}


def test_eval_cli_reports_both_splits(capsys):
    from llava_local.cli import main

    assert main(["eval", "synthetic", "--n", "2", "--seed", "1000", "--phrasing", "both", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["phrasing"] == "both"
    teacher_q = {k: v["n_questions"] for k, v in out.items() if k.startswith("bundle")}
    assert set(teacher_q) == {"bundle", "bundle/heldout"} and all(n > 0 for n in teacher_q.values())
