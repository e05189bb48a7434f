"""Input loaders (COCO, JSONL, TSV), image checks, and stage-1 pretraining data."""

from __future__ import annotations

import json

import pytest
from datagen_fixtures import make_coco

from llava_local.cli import main
from training.datagen.pretrain import make_pretrain
from training.datagen.prompts import BRIEF_REQUESTS
from training.datagen.records import DatagenError, load_records


def test_coco_captions_and_instances_merge_with_normalised_boxes(tmp_path):
    caps, inst = make_coco(tmp_path, tags=("good", "malformed"))
    recs = load_records([caps, inst])
    assert [r.id for r in recs] == ["1", "2"]
    r = recs[0]
    assert r.image == "images/000000000001.jpg"
    assert r.captions == ("good: a red cup on a wooden table.", "A photo, a red cup on a wooden table.")
    # bbox [4, 2, 10, 8] px on a 40×20 image → [0.1, 0.1, 0.35, 0.5]
    assert [(b.category, b.bbox) for b in r.boxes] == [("cup", (0.1, 0.1, 0.35, 0.5)), ("table", (0.5, 0.0, 1.0, 1.0))]


def test_jsonl_pixel_boxes_need_a_size(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text(json.dumps({"image": "a.jpg", "caption": "x", "width": 200, "height": 100,
                             "boxes": [{"category": "dog", "bbox": [20, 10, 120, 90]}]}) + "\n\n"
                 + json.dumps({"id": "b", "image": "b.jpg", "captions": ["y"],
                               "boxes": [{"category": "cat", "bbox": [0.1, 0.2, 0.3, 0.4]}]}) + "\n")
    a, b = load_records([p])
    assert a.id == "a" and a.boxes[0].bbox == (0.1, 0.1, 0.6, 0.9)
    assert b.id == "b" and b.boxes[0].bbox == (0.1, 0.2, 0.3, 0.4)
    p.write_text(json.dumps({"image": "nowhere.jpg", "boxes": [{"category": "dog", "bbox": [20, 10, 120, 90]}]}))
    with pytest.raises(DatagenError, match="r.jsonl:1: pixel boxes"):
        load_records([p])


@pytest.mark.parametrize("name, content, match", [
    ("a.json", "{not json", "not valid JSON"),
    ("a.json", "[1, 2]", "not COCO"),
    ("a.jsonl", "[1]\n", "a.jsonl:1"),
    ("a.tsv", "image\tcaption\nonly-one-column\n", "a.tsv:2"),
    ("a.txt", "", "unsupported input"),
])
def test_bad_inputs_are_one_line_user_errors(tmp_path, name, content, match):
    p = tmp_path / name
    p.write_text(content)
    with pytest.raises(DatagenError, match=match):
        load_records([p])


def test_pretrain_counts_missing_images_and_seeds_requests(tmp_path):
    caps, _ = make_coco(tmp_path, tags=("good", "malformed", "flaky429"), missing=("malformed",))
    recs = load_records([caps])
    samples, stats = make_pretrain(recs, tmp_path, seed=0)
    assert stats["missing_images"] == 1 and stats["missing_examples"] == ["images/000000000002.jpg"]
    assert len(samples) == 2
    for s in samples:
        human, gpt = s["conversations"]
        assert human["from"] == "human" and gpt["from"] == "gpt"
        assert human["value"].startswith("<image>\n") and human["value"][8:] in BRIEF_REQUESTS
        assert gpt["value"] in dict((r.id, r.captions) for r in recs)[s["id"]]
    assert make_pretrain(recs, tmp_path, seed=0)[0] == samples
    every, _ = make_pretrain(recs, tmp_path, all_captions=True)
    assert len(every) == 4
    with pytest.raises(DatagenError, match="--image-root"):
        make_pretrain(recs, tmp_path / "elsewhere")


def test_pretrain_cli_from_tsv(tmp_path, capsys):
    make_coco(tmp_path, tags=("good", "malformed"))
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("image\tcaption\nimages/000000000001.jpg\tA red cup.\nimages/missing.jpg\tNothing.\n")
    out = tmp_path / "pt.json"
    assert main(["data", "pretrain", "--input", str(tsv), "-o", str(out)]) == 0
    data = json.loads(out.read_text())
    assert len(data) == 1 and data[0]["conversations"][1]["value"] == "A red cup."
    assert "1 images missing" in capsys.readouterr().out
    assert main(["data", "pretrain", "--input", str(tmp_path / "nope.tsv"), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file" in err and "Traceback" not in err


def test_data_pipeline_needs_no_torch():
    import subprocess
    import sys

    from datagen_fixtures import REPO

    code = ("import sys, training.datagen.cli, training.datagen.pipeline, training.datagen.synth, "
            "bench.datagen, training.datagen.backends; from llava_local.cli import build_parser; "
            "build_parser('data'); heavy = {'torch', 'transformers', 'onnx', 'textual', 'llama_cpp'}; "
            "print(sorted(heavy & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
