"""End to end on a hand-written release in the official layout: convert, fine-tune the tiny ScienceQA preset a few
steps (image and text-only questions), convert to a bundle, `eval scienceqa`; the printed table matches a count
made here from the fixture's own labels and the predictions JSONL, and a resumed run asks nothing twice.
"""

from __future__ import annotations

import json
import re

import pytest

pytest.importorskip("torch")

from sqa_fixtures import hand_count  # noqa: E402

from llava_local.cli import main  # noqa: E402

LETTERS = "ABCDE"


def _letter(text: str, n: int) -> int:
    """An independent reading of an answer (the scorer's three rules, written out again); -1 if none."""
    if text in LETTERS:
        letter = text
    elif re.match(r"[A-E]\. ", text):
        letter = text[0]
    else:
        found = re.findall(r"The answer is ([A-Z]).", text)
        letter = found[0] if len(found) == 1 else ""
    return LETTERS.index(letter) if letter and LETTERS.index(letter) < n else -1


def _expected_row(problems: dict, preds: dict[str, str]) -> dict[str, float | None]:
    right = {pid: _letter(text, len(problems[pid]["choices"])) == problems[pid]["answer"]
             for pid, text in preds.items()}
    return {c: (100 * sum(v) / len(v) if v else None) for c, v in hand_count(problems, right).items()}


@pytest.fixture(scope="module")
def tiny_sqa_bundle(sqa_release, tmp_path_factory):
    from converters.bundle import ConvertOptions, convert
    from converters.cli import quiet_libraries
    from training.tiny import make_tiny_base_models

    root, problems = sqa_release
    work = tmp_path_factory.mktemp("sqa-train")
    base = make_tiny_base_models(work / "base")
    models = [f"model.vision_tower={base.clip_dir}", f"model.language_model={base.llm_dir}"]
    images = root / "images" / "train"
    captions = [{"id": pid, "image": f"{pid}/image.png", "conversations": [
        {"from": "human", "value": "<image>"}, {"from": "gpt", "value": p["solution"] or "A ball."}]}
        for pid, p in problems.items() if p["split"] == "train" and p["image"]]
    (work / "captions.json").write_text(json.dumps(captions))
    assert main(["train", "tiny-stage1", *models, f"data.json={work / 'captions.json'}",
                 f"data.image_root={images}", f"train.out_dir={work / 'stage1'}"]) == 0
    assert main(["data", "scienceqa", "--base-dir", str(root), "--split", "train", "-o", str(work / "train.json")]) == 0
    assert main(["train", "tiny-scienceqa", *models, f"model.init_from={work / 'stage1'}",
                 f"data.json={work / 'train.json'}", f"data.image_root={images}",
                 f"train.out_dir={work / 'sqa'}"]) == 0
    out = work / "bundle"
    with quiet_libraries():
        convert(ConvertOptions(src=work / "sqa", out=out, quants=("f16",), name="tiny-sqa", verify=False),
                show_progress=False)
    return out


def test_train_convert_eval_table_matches_hand_count(sqa_release, tiny_sqa_bundle, tmp_path, capsys):
    root, problems = sqa_release
    pred = tmp_path / "pred.jsonl"
    args = ["eval", "scienceqa", str(tiny_sqa_bundle), "--base-dir", str(root), "--split", "test", "-o", str(pred),
            "--fallback", "wrong", "--threads", "1", "--max-tokens", "24"]
    assert main([*args, "--limit", "5"]) == 0  # a first, partial run
    capsys.readouterr()
    assert main(args) == 0  # resumes: asks the other 7
    out = capsys.readouterr().out
    lines = [json.loads(x) for x in pred.read_text().splitlines()]
    meta, answers = lines[0], lines[1:]
    assert meta["kind"] == "meta" and meta["quant"] == "f16" and len(meta["manifest_sha256"]) == 64
    test_pids = json.loads((root / "pid_splits.json").read_text())["test"]
    assert [a["question_id"] for a in answers] == test_pids  # each asked once, in order
    assert all(("<image>" in a["prompt"]) == bool(problems[a["question_id"]]["image"]) for a in answers)
    expected = _expected_row(problems, {a["question_id"]: a["text"] for a in answers})
    header = next(ln for ln in out.splitlines() if ln.startswith("Method"))
    row = next(ln for ln in out.splitlines() if ln.startswith("LLaVA"))
    got = dict(zip(header.split()[1:], row.split()[1:], strict=True))
    assert got == {c: "-" if v is None else f"{v:.2f}" for c, v in expected.items()}
    counts = next(ln for ln in out.splitlines() if ln.startswith("questions")).split()[1:]
    assert counts[-1] == str(len(test_pids)) and counts[3] == "6" and counts[4] == "6" and counts[5] == "3"
    assert meta["manifest_sha256"][:16] in out


def test_another_bundle_is_refused_for_the_same_file(sqa_release, tiny_sqa_bundle, tmp_path, capsys):
    root, _ = sqa_release
    pred = tmp_path / "p.jsonl"
    pred.write_text(json.dumps({"kind": "meta", "split": "test", "manifest_sha256": "0" * 64, "quant": "f16"}) + "\n")
    rc = main(["eval", "scienceqa", str(tiny_sqa_bundle), "--base-dir", str(root), "-o", str(pred), "--limit", "1"])
    assert rc == 2 and "another bundle" in capsys.readouterr().err
