"""The recipe's held-out gates: a gated stage runs its preset's steps, then probes until the target or the cap; the
listing probe asks exactly what the listing stage trains; the gates' scenes are neither training's nor the eval's."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest
from test_demo_recipe_parts import plain_mix, toy_clip, toy_lm

from llava_local.errors import UsageError
from training.config import load_config
from training.demo.gates import Gate
from training.demo.recipe import Recipe
from training.demo.recipe_config import RECIPE_YAML, load_recipe, scaled_steps

pytest.importorskip("torch")


def _with_gates(tmp_path, **gates: dict) -> Path:
    import yaml

    d = yaml.safe_load(RECIPE_YAML.read_text())
    d["gates"] |= gates
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def test_gates_are_read_from_the_recipe_and_probe_their_own_scenes(tmp_path):
    cfg = load_recipe(RECIPE_YAML)
    assert cfg.gate_seed not in (cfg.world_seed, cfg.eval_seed)
    listing = {"probe": "listing", "target": 0.9, "every": 1000, "max_steps": 8000}
    assert load_recipe(_with_gates(tmp_path, listing=listing)).gates == {"listing": Gate("listing", 0.9, 1000, 8000)}
    with pytest.raises(UsageError, match="unknown key 'bogus'"):
        load_recipe(_with_gates(tmp_path, listing=listing | {"bogus": 1}))
    with pytest.raises(UsageError, match="unknown key 'clip'"):
        load_recipe(_with_gates(tmp_path, clip=listing))
    with pytest.raises(UsageError, match="gates.seed"):
        replace(cfg, gate_seed=cfg.eval_seed)
    with pytest.raises(UsageError, match="not a LLaVA stage"):
        replace(cfg, gates={"clip": Gate("listing", 0.9, 1000, 8000)})
    with pytest.raises(UsageError, match="unknown"):
        Gate("colour", 0.9, 10, 100)
    with pytest.raises(UsageError, match="target"):
        Gate("listing", 1.5, 10, 100)


def test_a_gate_keeps_the_presets_steps_and_warmup_and_makes_max_steps_the_cap(tmp_path):
    cfg = load_recipe(RECIPE_YAML)
    preset = load_config(cfg.listing)
    gate = Gate("listing", 0.9, 1000, 8000)
    got = Recipe(cfg, tmp_path, tmp_path / "out", {})._gate_overrides(gate, preset)
    warmup = -(-preset.optim.warmup_ratio * preset.optim.max_steps // 1)
    assert got == [f"optim.max_steps={gate.max_steps}", f"optim.warmup_steps={int(warmup)}",
                   f"train.probe_after={preset.optim.max_steps}", f"train.probe_every={gate.every}"]
    with pytest.raises(UsageError, match="below"):
        Recipe(cfg, tmp_path, tmp_path / "out", {})._gate_overrides(replace(gate, max_steps=10), preset)
    with pytest.raises(UsageError, match="constant schedule"):
        Recipe(cfg, tmp_path, tmp_path / "out", {})._gate_overrides(gate, load_config(cfg.stage2))


@pytest.fixture(scope="module")
def listing_data(tmp_path_factory):
    """The listing records of 12 scenes and a SentencePiece tokenizer on the scenes' text."""
    from training.demo.corpus import build_dataset, doc_text, make_scenes, text_corpus
    from training.tokenizer import train_sentencepiece

    root = tmp_path_factory.mktemp("listing")
    scenes = make_scenes(0, 12)
    build_dataset(root / "data", scenes, 32, seed=0, mix=plain_mix())
    texts = [doc_text(d) for d in text_corpus(scenes, 0, plain_mix())]
    return root / "data" / "listing.json", train_sentencepiece(texts, root / "tok", vocab_size=400)


def test_the_listing_probe_asks_what_the_listing_stage_trains(listing_data):
    """Its prompt tokenizes to a prefix of the listing record that names the same object first, and the record goes
    on with that object's region: what the model learned to continue is what the probe asks it to continue."""
    import json

    from transformers import AutoTokenizer

    from llava_local.templates import Piece, Turn, get_template
    from training.dataset import encode

    listing_json, tok_dir = listing_data
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    image_id = len(tok)
    records = json.loads(listing_json.read_text())
    assert records
    for r in records:
        question, answer = (c["value"] for c in r["conversations"])
        phrase, rest = answer.split(":", 1)
        pieces = get_template("plain").render([Turn("user", question.replace("<image>\n", ""), 1),
                                               Turn("assistant", answer)], add_generation_prompt=False)
        record_ids, _ = encode(pieces, tok, image_id, 9)
        prompt_ids, _ = encode([Piece("image"), Piece("text", f"{phrase}:")], tok, image_id, 9)
        assert record_ids[: len(prompt_ids)] == prompt_ids
        region = tok.decode(record_ids[len(prompt_ids):]).split(".")[0].strip()
        assert region == rest.split(".")[0].strip()


def test_a_gated_stage_probes_until_the_target_or_the_cap(tmp_path, caplog):
    """A whole tiny recipe up to the listing stage: with a target no model reaches, the stage probes after its
    preset's steps and every `every` steps after, to the cap, and the report says so; with a target every model
    reaches, it stops at the first probe."""
    base = load_recipe(RECIPE_YAML, scale=0.01)
    cfg = replace(base, scenes=40, image_size=32, lm=toy_lm(), clip=toy_clip(), gate_n=4,
                  gates={"listing": Gate("listing", 1.0, 1000, 4000)})
    work = tmp_path / "work"
    caplog.set_level(logging.INFO, logger="training.demo.gates")
    planned = scaled_steps(load_config(cfg.listing).optim.max_steps, 0.01)
    every, cap = scaled_steps(1000, 0.01), scaled_steps(4000, 0.01)
    never = Recipe(cfg, work, tmp_path / "out", {}).run("data", "listing")["stages"]["listing"]["gate"]
    assert [h["step"] for h in never["history"]] == list(range(planned, cap + 1, every))
    assert never["steps"] == cap and not never["reached"]
    assert all(0 <= h["score"] <= 1 for h in never["history"])
    said = [r.getMessage() for r in caplog.records if r.name == "training.demo.gates"]  # each probe is logged
    assert said == [f"step {h['step']}: listing probe {100 * h['score']:.1f}% (target 100%)" for h in never["history"]]

    cfg = replace(cfg, gates={"listing": Gate("listing", 0.0, 1000, 4000)})  # target 0: one probe, recorded
    first = Recipe(cfg, work, tmp_path / "out", {}).run("listing", "listing")["stages"]["listing"]["gate"]
    assert first["steps"] == planned and first["reached"] and len(first["history"]) == 1
    assert len((work / "listing" / "metrics.jsonl").read_text().splitlines()) == planned
