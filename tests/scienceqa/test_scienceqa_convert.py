"""`llava-local data scienceqa`: the official layout → LLaVA JSON in the paper's formats; one-line errors."""

from __future__ import annotations

import json

import pytest

from llava_local.cli import main
from training.scienceqa.prompts import FORMATS, question_prompt, render
from training.scienceqa.release import load_release


def test_train_split_in_qcm_lea(sqa_release, tmp_path, capsys):
    root, problems = sqa_release
    out = tmp_path / "train.json"
    assert main(["data", "scienceqa", "--base-dir", str(root), "--split", "train", "-o", str(out)]) == 0
    assert "format QCM-LEA" in capsys.readouterr().out
    recs = json.loads(out.read_text())
    split = json.loads((root / "pid_splits.json").read_text())["train"]
    assert [r["id"] for r in recs] == split
    for r in recs:
        p = problems[r["id"]]
        human, gpt = (m["value"] for m in r["conversations"])
        assert ("image" in r) == (p["image"] is not None)
        if p["image"]:
            assert r["image"] == f"{r['id']}/image.png" and (root / "images/train" / r["image"]).is_file()
            assert human.endswith("\n<image>")
        else:
            assert "<image>" not in human
        letter = "ABCDE"[p["answer"]]
        assert gpt.endswith(f"The answer is {letter}.") and "Answer:" not in gpt
        assert human.startswith(p["question"] + "\nContext: ")
    # one record spelled out: what upstream's converter writes for this problem (QCM-LEA, image and hint)
    r = next(r for r in recs if r["id"] == "102")
    assert r["conversations"][0]["value"] == ("Which colour is the ball?\nContext: The ball is blue.\n"
                                              "Options: (A) red (B) yellow (C) blue (D) green\n<image>")
    assert r["conversations"][1]["value"] == ("Colours are properties of objects. The ball is blue. "
                                              "The answer is C.")


def test_eval_question_and_empty_fields(sqa_release):
    root, _ = sqa_release
    rel = load_release(root)
    p = rel.problems["103"]  # no hint, no image
    assert render(p, "CQM-A") == ("Context: N/A\nQuestion: Which word names the colour yellow?\n"
                                  "Options: (A) red (B) yellow (C) green (D) blue (E) black", "The answer is B.")
    assert question_prompt(p).endswith("(E) black\nAnswer with the option's letter from the given choices directly.")
    assert render(p, "QCM-LEPA")[1] == ("LECTURE: Colours are properties of objects.\nSOLUTION: The ball is yellow.\n"
                                        "###\nANSWER: B.")
    empty = rel.problems["100"]  # no lecture, no solution
    assert render(empty, "QCM-AL")[1] == "The answer is A."  # the empty "BECAUSE:" is dropped
    assert render(empty, "QCM-LEA")[1] == "The answer is A."
    assert render(empty, "QCM-LEPA")[1] == "###\nANSWER: A."
    assert len(FORMATS) == 80


@pytest.mark.parametrize("argv, words", [
    (["--split", "dev"], "split 'dev' is not in"),
    (["--split", "train", "--prompt-format", "QCM-X"], "unknown prompt format 'QCM-X'"),
    (["--split", "test", "--base-dir", "/nonexistent"], "problems.json: not found"),
])
def test_mistakes_are_one_line(sqa_release, tmp_path, capsys, argv, words):
    root, _ = sqa_release
    base = [] if "--base-dir" in argv else ["--base-dir", str(root)]
    assert main(["data", "scienceqa", *base, *argv, "-o", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err and "Traceback" not in err


def test_missing_image_is_named(sqa_release, tmp_path, capsys):
    import shutil

    root, _ = sqa_release
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    (copy / "images/test/100/image.png").unlink()
    assert main(["data", "scienceqa", "--base-dir", str(copy), "--split", "test", "-o", str(tmp_path / "t.json")]) == 2
    assert "problem 100: image" in capsys.readouterr().err
    assert main(["data", "scienceqa", "--base-dir", str(copy), "--split", "test", "--no-image-check",
                 "-o", str(tmp_path / "t.json")]) == 0


def test_synthetic_release_converts_and_labels(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["data", "synth-scienceqa", "--n", "21", "--size", "32", "-o", str(out)]) == 0
    rel = load_release(out)
    probs = list(rel.problems.values())
    assert {p.subject for p in probs} == {"natural science", "social science", "language science"}
    assert any(p.image and not p.hint for p in probs) and any(p.hint and not p.image for p in probs)
    assert any(not p.hint and not p.image for p in probs)
    assert any(p.grade in ("grade1", "grade2") for p in probs) and any(p.grade in ("grade8", "grade9") for p in probs)
    assert all(p.lecture and p.solution for p in probs)
    assert main(["data", "scienceqa", "--base-dir", str(out), "--split", "val", "-o", str(tmp_path / "v.json")]) == 0
