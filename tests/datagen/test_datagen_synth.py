"""`llava-local data synth`: files, determinism, every answer re-checked from disk, and the training loader."""

from __future__ import annotations

import json

from PIL import Image

from bench.datagen import main as bench_main
from llava_local.cli import main
from llava_local.preprocess import PreprocessConfig
from llava_local.templates import get_template
from training.datagen.records import load_records
from training.datagen.synth import synthesize, verify
from training.datagen.teacher import QTYPES
from training.datagen.world import scene_from_boxes


def test_synth_cli_writes_a_checked_reproducible_dataset(tmp_path, capsys):
    out = tmp_path / "shapes"
    argv = ["data", "synth", "--n", "40", "--seed", "3", "-o", str(out), "--size", "64", "--quiet"]
    assert main(argv) == 0
    assert "wrote 40 scenes, 120 instruction samples, 40 pretrain samples" in capsys.readouterr().out
    pngs = sorted((out / "images").glob("*.png"))
    assert len(pngs) == 40 and Image.open(pngs[0]).size == (64, 64)
    instruct = json.loads((out / "instruct.json").read_text())
    assert len(instruct) == 120
    for rtype in ("conversation", "detail", "complex_reasoning"):
        part = json.loads((out / f"instruct.{rtype}.json").read_text())
        assert len(part) == 40 and all(s["id"].endswith("-" + rtype) for s in part)
    checked = verify(out)
    assert checked["failures"] == [] and checked["claims"] > 40 * 15
    stats = json.loads((out / "instruct.stats.json").read_text())
    assert stats["accepted"] == 120 and stats["rejected"] == {} and stats["questions"] > 40 * 5

    # COCO files describe the same scenes as records.jsonl
    coco = load_records([out / "captions.json", out / "instances.json"])
    jsonl = load_records([out / "records.jsonl"])
    assert [r.image for r in coco] == [r.image for r in jsonl]
    for a, b in zip(coco, jsonl):
        sa = scene_from_boxes(a.id, ({"category": x.category, "bbox": x.bbox} for x in a.boxes))
        sb = scene_from_boxes(b.id, ({"category": x.category, "bbox": x.bbox} for x in b.boxes))
        assert sa.objects == sb.objects and a.captions == b.captions

    questions = [json.loads(x) for x in (out / "questions.jsonl").read_text().splitlines()]
    assert {q["type"] for q in questions} == set(QTYPES)
    assert all(q["answer"] in ("yes", "no") for q in questions if q["type"] in ("relation", "existence"))

    # a second run resumes from the complete journal and writes the same bytes
    before = (out / "instruct.json").read_bytes()
    assert main(argv) == 0
    assert (out / "instruct.json").read_bytes() == before
    assert json.loads((out / "instruct.stats.json").read_text())["resumed_from_journal"] == 120

    # the same scenes through `generate` from the COCO files, with the teacher backend
    gen = out / "gen.json"
    assert main(["data", "generate", "--input", str(out / "captions.json"), str(out / "instances.json"),
                 "--backend", "teacher", "--per-image", "2", "--dedup", "image", "-o", str(gen), "--quiet"]) == 0
    assert len(json.loads(gen.read_text())) == 80 and verify(out, "gen.json")["failures"] == []


def test_synth_bench_entry_point(tmp_path, capsys):
    assert bench_main(["--n", "300", "-o", str(tmp_path / "b")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["samples"] == 900 and report["failures"] == 0 and report["scenes_per_second"] > 0


def test_synth_output_loads_in_the_training_loader(tmp_path):
    from training.dataset import IGNORE_INDEX, LlavaDataset
    from training.dataset import load_records as load_llava
    from training.model import load_tokenizer
    from training.tokenizer import tiny_corpus, train_sentencepiece

    out = tmp_path / "shapes"
    synthesize(10, 1, out, size=56, progress=False)
    texts = [t["value"] for s in json.loads((out / "instruct.json").read_text()) for t in s["conversations"]]
    tok = load_tokenizer(str(train_sentencepiece(tiny_corpus(300) + texts, tmp_path / "tok", vocab_size=450)))
    for name, template, n in (("instruct.json", "vicuna_v1", 30), ("pretrain.json", "plain", 10)):
        ds = LlavaDataset(load_llava(out / name), out, tok, get_template(template), PreprocessConfig(size=56),
                          n_image_tokens=4, context_length=2048)
        assert len(ds) == n
        for i in range(len(ds)):
            item = ds[i]
            assert tuple(item["pixel_values"].shape) == (1, 3, 56, 56)
            assert int((item["input_ids"] == tok.convert_tokens_to_ids("<image>")).sum()) == 4
            assert int((item["labels"] != IGNORE_INDEX).sum()) > 0 and not item["truncated"]
