"""The paper's table equals a count made here from the fixture's labels, for answers right and wrong across every
category. LLaVA's answers are written into a predictions file naming the demo bundle (the resume path asks
nothing), so every column gets a mix of right, wrong and unreadable answers chosen by the test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqa_fixtures import hand_count

from llava_local.cli import main
from training.scienceqa.evaluate import bundle_identity

BUNDLE = Path(__file__).resolve().parents[2] / "models" / "llava-local-tiny"
LETTERS = "ABCDE"


def _answer(k: int, p: dict) -> tuple[str, bool]:
    """The k-th answer text and whether it is right: right letter, right sentence, wrong letter, unreadable."""
    right, wrong = LETTERS[p["answer"]], LETTERS[(p["answer"] + 1) % len(p["choices"])]
    if p["image"] and not p["hint"]:  # image-only questions go worse, so TXT and IMG differ
        return [(wrong, False), (right, True), ("The answer is F.", False)][k % 3]
    return [(right, True), (f"Because of the hint. The answer is {right}.", True), (wrong, False),
            ("I am not sure.", False), (f"{right}. It is so.", True)][k % 5]


def _hand_count(problems: dict, right: dict[str, bool]) -> dict[str, str]:
    return {c: f"{100 * sum(v) / len(v):.2f}" if v else "-" for c, v in hand_count(problems, right).items()}


@pytest.mark.parametrize("split", ["train", "test"])
def test_table_matches_hand_count(sqa_release, tmp_path, capsys, split):
    root, problems = sqa_release
    pids = json.loads((root / "pid_splits.json").read_text())[split]
    answers = {pid: _answer(k, problems[pid]) for k, pid in enumerate(pids)}
    pred = tmp_path / "pred.jsonl"
    meta = {"kind": "meta", "suite": "scienceqa", "split": split, **bundle_identity(BUNDLE, None)}
    pred.write_text("".join(json.dumps(x) + "\n" for x in [meta] + [
        {"kind": "answer", "question_id": pid, "prompt": "?", "text": answers[pid][0]} for pid in pids]))
    assert main(["eval", "scienceqa", str(BUNDLE), "--base-dir", str(root), "--split", split, "-o", str(pred),
                 "--fallback", "wrong", "--quiet"]) == 0
    out = capsys.readouterr().out.splitlines()
    header = next(ln for ln in out if ln.startswith("Method")).split()[1:]
    row = next(ln for ln in out if ln.startswith("LLaVA")).split()[1:]
    expected = _hand_count(problems, {pid: ok for pid, (_, ok) in answers.items()})
    assert dict(zip(header, row, strict=True)) == expected
    assert len({v for v in expected.values()}) > 3  # the columns really differ
    unreadable = sum(1 for t, _ in answers.values() if t in ("I am not sure.", "The answer is F."))  # F: no such option
    assert f"LLaVA {unreadable}" in next(ln for ln in out if ln.startswith("unreadable"))


def test_answers_to_another_prompt_are_not_mixed_in(sqa_release, tmp_path, capsys):
    root, _ = sqa_release
    pred = tmp_path / "pred.jsonl"
    meta = {"kind": "meta", "suite": "scienceqa", "split": "test", **bundle_identity(BUNDLE, None),
            "prompt": "CQM-A", "instruction": "Answer with the option's letter from the given choices directly."}
    pred.write_text(json.dumps(meta) + "\n")
    rc = main(["eval", "scienceqa", str(BUNDLE), "--base-dir", str(root), "-o", str(pred), "--quiet",
               "--prompt-format", "QCM-LEA", "--no-instruction"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "another prompt" in err and "\n" not in err
