"""The recipe's own pieces on toy sizes: data the training module accepts, and loadable base models."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from training.config import load_config
from training.demo.recipe_config import RECIPE_YAML, STAGES, load_recipe

torch = pytest.importorskip("torch")


def plain_mix(**changes):
    """The paper's stage-2 mix with nothing of the recipe's extras switched on; `changes` switch one on."""
    from training.demo.corpus import DataMix

    return DataMix(**{"vqa": 1.0, "vqa_turns": (3, 8), "vqa_weights": {}, "layout_captions": 0.0, "relations": 0.0,
                      "counting": 0.0, "description_order": "reading", "conversation": 0.25, "detail": 0.1,
                      "complex_reasoning": 0.1, "natural": 0.0} | changes)


def toy_lm(**changes):
    """A base LLaMA small enough to train a few steps in a test."""
    from training.demo.lm_pretrain import LMConfig

    return LMConfig(**{"hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 2, "num_kv_heads": 2,
                       "max_position_embeddings": 512, "seq_len": 64, "batch_size": 4, "steps": 2, "lr": 2e-3,
                       "warmup": 1, "weight_decay": 0.05, "seed": 0} | changes)


def toy_clip(**changes):
    """A stand-in CLIP small enough to train a few steps in a test."""
    from training.demo.clip_pretrain import ClipConfig

    return ClipConfig(**{"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
                         "num_layers": 2, "num_heads": 2, "text_hidden_size": 32, "text_layers": 2, "text_max_len": 64,
                         "projection_dim": 16, "batch_size": 8, "steps": 2, "lr": 1e-3, "warmup": 1,
                         "weight_decay": 0.1, "region_weight": 1.0, "region_max_len": 8, "hard_negative_weight": 0.0,
                         "empty_regions": False, "position_init_std": 0.02, "seed": 0} | changes)


def test_recipe_yaml_and_stage_presets_validate():
    cfg = load_recipe(RECIPE_YAML)
    assert cfg.eval_seed != cfg.world_seed and cfg.clip.image_size == cfg.image_size
    assert cfg.lm.hidden_size % 32 == 0  # q8_0 blocks of 32
    s1, s2 = load_config(cfg.stage1), load_config(cfg.stage2)
    assert (s1.stage, s1.model.template, s2.stage, s2.model.template) == (1, "plain", 2, "vicuna_v1")
    listing, lookup = load_config(cfg.listing), load_config(cfg.lookup)  # the curriculum trains the LLM too
    relation = load_config(cfg.relation)
    assert (listing.optim.schedule, lookup.optim.schedule, relation.optim.schedule, s2.optim.schedule) == (
        "constant", "constant", "constant", "wsd")
    assert cfg.clip.empty_regions
    assert (listing.stage, listing.model.template, Path(listing.data.json).name) == (2, "plain", "listing.json")
    assert (lookup.stage, lookup.model.template, Path(lookup.data.json).name) == (2, "vicuna_v1", "lookup.json")
    assert (relation.stage, relation.model.template, Path(relation.data.json).name) == (2, "vicuna_v1",
                                                                                       "relation.json")
    final = load_config(cfg.final)  # the second pass repeats stage 2's data and schedule, only longer ...
    assert (Path(final.data.json).name, final.optim.schedule, final.model.template) == (
        "stage2.json", s2.optim.schedule, s2.model.template)
    assert final.optim.max_steps > s2.optim.max_steps and final.optim.lr == s2.optim.lr
    polish = load_config(cfg.polish)  # ... then a short pass of them
    assert (Path(polish.data.json).name, polish.optim.schedule, polish.optim.decay_ratio, polish.optim.lr) == (
        "stage2.json", s2.optim.schedule, s2.optim.decay_ratio, s2.optim.lr)
    assert polish.optim.max_steps < s2.optim.max_steps
    order = [STAGES.index(s) for s in ("stage1", "listing", "lookup", "relation", "stage2", "final", "polish",
                                       "convert")]
    assert order == sorted(order)
    assert STAGES[0] == "data" and STAGES[-1] == "eval"


def test_scale_shrinks_a_trial_run():
    from training.demo.recipe_config import scaled_steps

    full, small = load_recipe(RECIPE_YAML), load_recipe(RECIPE_YAML, scale=0.1)
    assert small.scenes < full.scenes and small.lm.steps < full.lm.steps and small.clip.steps < full.clip.steps
    assert (full.stage_scale, small.stage_scale) == (1.0, 0.1)
    s2 = load_config(full.stage2).optim.max_steps
    assert 10 <= scaled_steps(s2, 0.1) < s2 and scaled_steps(s2, 1.0) == s2 and scaled_steps(0, 0.1) == 0


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """5 scenes → images + LLaVA JSON, and a SentencePiece tokenizer on their text."""
    from training.demo.corpus import build_dataset, doc_text, make_scenes, text_corpus
    from training.tokenizer import train_sentencepiece

    root = tmp_path_factory.mktemp("toy")
    scenes = make_scenes(0, 40)
    info = build_dataset(root / "data", scenes, 32, seed=0, mix=plain_mix())
    texts = text_corpus(scenes, 0, plain_mix())
    tok_dir = train_sentencepiece([doc_text(d) for d in texts], root / "tok", vocab_size=400)
    return root, info, texts, tok_dir


def test_dataset_is_accepted_by_the_training_module(toy):
    from llava_local.preprocess import PreprocessConfig
    from llava_local.templates import get_template
    from training.dataset import LlavaDataset, load_records
    from training.model import load_tokenizer

    root, info, _, tok_dir = toy
    assert info["stage1"] == 40 and info["stage2"] >= 40 and set(info["stage2_kinds"]) >= {"vqa", "conversation"}
    tok = load_tokenizer(str(tok_dir))
    from training.datagen.world import REGIONS, referable
    from training.demo.corpus import make_scenes

    assert info["listing"] == sum(1 for s in make_scenes(0, 40) if referable(s))  # a listing per nameable scene
    lookups = json.loads((root / "data" / "lookup.json").read_text())
    assert info["lookup"] == len(lookups) > 40
    assert {c["value"] for r in lookups for c in r["conversations"][1::2]} <= set(REGIONS.values())  # only "where"
    for name, template in (("stage1", "plain"), ("listing", "plain"), ("lookup", "vicuna_v1"),
                           ("relation", "vicuna_v1"), ("stage2", "vicuna_v1")):
        recs = load_records(root / "data" / f"{name}.json")
        ds = LlavaDataset(recs, root / "data", tok, get_template(template), PreprocessConfig(size=32), 4, 1024)
        for i in range(len(ds)):  # raises TemplateError on a tokenization mismatch
            item = ds[i]
            assert (item["labels"] != -100).any() and item["pixel_values"].shape == (1, 3, 32, 32)


def test_curriculum_names_every_object_right_before_its_region():
    from training.datagen.world import REGIONS, make_scene, referable
    from training.demo.corpus import listing

    orders = set()
    for i in range(30):
        scene = make_scene(0, i)
        text = listing(scene, random.Random(i))
        entries = [e.split(": ") for e in text.removesuffix(".").split(". ")]
        expected = {ref: o.region for o, ref in referable(scene)}
        assert dict(entries) == expected and len(entries) == len(expected)  # each object once, with its region
        assert all(region in REGIONS.values() for _, region in entries)
        orders.add(tuple(ref for ref, _ in entries) == tuple(ref for _, ref in referable(scene)))
    assert orders == {True, False}  # random order: not always the scene's reading order


def test_short_answers_are_canonical(toy):
    root = toy[0]
    recs = json.loads((root / "data" / "stage2.json").read_text())
    answers = {c["value"] for r in recs if "-vqa" in r["id"] for c in r["conversations"][1::2]}
    assert {"yes", "no"} <= answers and all(a == a.strip() for a in answers)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_lm_pretrain_writes_a_loadable_llama(toy, tmp_path, precision):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.demo.lm_pretrain import pretrain_lm

    _, _, texts, tok_dir = toy
    cfg = toy_lm(steps=3, precision=precision)
    report = pretrain_lm(texts, tok_dir, tmp_path / "lm", cfg)
    assert report["steps"] == 3 and report["final_loss"] > 0
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "lm"))
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "lm"))
    assert model.config.vocab_size == len(tok) and model.config.hidden_size == 64
    # bf16 autocast computes in bf16 but keeps (and saves) fp32 master weights
    assert model.model.embed_tokens.weight.dtype == torch.float32


def test_recipe_precision_is_validated_and_auto_follows_the_cpu(tmp_path):
    from dataclasses import replace

    from llava_local.errors import UsageError
    from training.demo.recipe import Recipe
    from training.demo.recipe_config import native_bf16

    cfg = load_recipe(RECIPE_YAML)
    with pytest.raises(UsageError, match="precision"):
        replace(cfg, precision="fp16")
    with pytest.raises(ValueError, match="precision"):
        toy_lm(precision="fp16")
    auto = Recipe(replace(cfg, precision="auto"), tmp_path, tmp_path / "out", {})
    assert auto.precision == ("bf16" if native_bf16() else "fp32") == auto.report["precision"]
    assert Recipe(replace(cfg, precision="fp32"), tmp_path, tmp_path / "out", {}).precision == "fp32"


def _clip_inputs(toy, empty_cells: bool = False) -> tuple:
    """The toy data's stage-1 records as the clip stage takes them: (pixels, captions, regions, tokenizer dir)."""
    import numpy as np

    from llava_local.preprocess import PreprocessConfig, load_image, to_pixels
    from training.demo.corpus import make_scenes, region_phrases

    root, _, _, tok_dir = toy
    recs = json.loads((root / "data" / "stage1.json").read_text())
    pp = PreprocessConfig(size=32)
    pixels = torch.from_numpy(np.stack([to_pixels(load_image(root / "data" / r["image"]), pp) for r in recs]))
    scenes = {s.key: s for s in make_scenes(0, 40)}
    regions = [region_phrases(scenes[r["id"].split("-")[0]], empty_cells) for r in recs]
    captions = [r["conversations"][1]["value"] for r in recs]
    return pixels, captions, regions, tok_dir


def test_clip_pretrain_writes_a_loadable_vision_tower(toy, tmp_path):
    from transformers import CLIPVisionModel

    from training.demo.clip_pretrain import pretrain_clip

    pixels, captions, regions, tok_dir = _clip_inputs(toy)
    cfg = toy_clip(position_init_std=1.0, hard_negative_weight=1.0)
    report = pretrain_clip(pixels, captions, tok_dir, tmp_path / "clip", cfg, regions=regions)
    assert report["steps"] == 2 and report["regions"] == sum(len(r) for r in regions)
    assert 0 <= report["final_region_acc"] <= 1 and 0 <= report["final_hard_negative_acc"] <= 1
    # hard negatives asked for but not given: a clear error, not a shape mismatch deep in the loss
    with pytest.raises(ValueError, match="hard negatives"):
        pretrain_clip(pixels, captions, tok_dir, tmp_path / "clip2", cfg,
                      regions=[[(p, b) for p, b, _ in rs] for rs in regions])
    tower = CLIPVisionModel.from_pretrained(str(tmp_path / "clip"))
    out = tower(pixels[:2], output_hidden_states=True)
    assert out.hidden_states[-2].shape == (2, 1 + 16, 32)
    # the position embeddings start at the configured scale (CLIP's own init would give std 0.02)
    assert 0.8 < tower.embeddings.position_embedding.weight.std().item() < 1.2


def test_clip_pretrain_is_bit_reproducible(toy, tmp_path):
    # Its region terms gather rows by index; without deterministic algorithms the CPU backward of those gathers
    # sums in thread order and two runs drift apart (docs/demo-model-history.md, twelfth round). 30 steps at this
    # size are enough for that drift to show when the setting is off (checked).
    from safetensors.torch import load_file

    from training.demo.clip_pretrain import pretrain_clip

    pixels, captions, regions, tok_dir = _clip_inputs(toy, empty_cells=True)
    cfg = toy_clip(hidden_size=64, intermediate_size=128, projection_dim=32, batch_size=len(pixels), steps=30,
                   hard_negative_weight=1.0)
    towers = []
    for run in ("a", "b"):
        pretrain_clip(pixels, captions, tok_dir, tmp_path / run, cfg, regions=regions)
        towers.append(load_file(str(tmp_path / run / "model.safetensors")))
    assert towers[0].keys() == towers[1].keys()
    assert all(torch.equal(towers[0][k], towers[1][k]) for k in towers[0])
    assert not torch.are_deterministic_algorithms_enabled()  # the global setting is restored afterwards


def test_tokenizer_model_is_byte_identical_wherever_it_trains(tmp_path):
    # Every checkpoint carries tokenizer.model, so a rebuild is byte-identical only if the model records no path of
    # the machine it trained on (SentencePiece writes its input file and output prefix into the model).
    import sentencepiece as spm

    from training.tokenizer import tiny_corpus, train_sentencepiece

    texts = tiny_corpus(200, seed=0)
    models = [(train_sentencepiece(texts, tmp_path / run / "deeper", vocab_size=400) / "tokenizer.model").read_bytes()
              for run in ("a", "b")]
    assert models[0] == models[1]
    assert str(tmp_path).encode() not in models[0] and b"/tmp" not in models[0]
    sp = spm.SentencePieceProcessor(model_proto=models[0])
    assert sp.vocab_size() == 400 and sp.decode(sp.encode(texts[0])) == texts[0]


def test_region_phrases_have_every_other_shape_as_hard_negatives():
    from training.datagen.world import SHAPES, make_scene
    from training.demo.corpus import region_phrases, scene_text

    scene = make_scene(0, 7)
    pairs = region_phrases(scene)
    assert len(pairs) == len(scene.objects)
    for o, (phrase, box, negatives) in zip(scene.objects, pairs, strict=True):
        assert box == o.box and phrase == f"{o.region}: {o.size} {o.colour} {o.shape}"
        assert phrase.split(": ")[1] in scene_text(scene)  # the written scene's entry, without the article
        # one negative per other shape; each differs from the phrase in the shape word only
        assert sorted(n.rsplit(" ", 1)[1] for n in negatives) == sorted(set(SHAPES) - {o.shape})
        assert all(n.rsplit(" ", 1)[0] == phrase.rsplit(" ", 1)[0] for n in negatives)


def test_region_phrases_can_name_every_empty_cell_empty():
    from training.datagen.world import REGIONS, make_scene
    from training.demo.clip_pretrain import _box_weights
    from training.demo.corpus import region_phrases

    scene = next(s for i in range(50) if len((s := make_scene(0, i)).objects) == 3)
    pairs = region_phrases(scene, empty_cells=True)
    assert pairs[:3] == region_phrases(scene) and len(pairs) == 9  # the objects' pairs unchanged, then 6 empty cells
    occupied = {o.region for o in scene.objects}
    empty = pairs[3:]
    assert {p.split(": ")[0] for p, _, _ in empty} == set(REGIONS.values()) - occupied
    for phrase, box, negatives in empty:
        region = phrase.split(": ")[0]
        assert phrase == f"{region}: empty" and len(negatives) == len(pairs[0][2])  # the same k as objects' pairs
        assert all(n.startswith(f"{region}: ") and not n.endswith("empty") for n in negatives)
        weights = _box_weights([box], 3)[0]  # the whole cell: all its weight on that cell's patch
        row, col = next(k for k, v in REGIONS.items() if v == region)
        assert weights[row * 3 + col] == 1.0
    assert region_phrases(scene, empty_cells=True) == pairs  # seeded by the scene


def test_box_weights_cover_exactly_the_patches_under_the_box():
    from training.demo.clip_pretrain import _box_weights

    # a box over the top-left patch and half of its right neighbour, on a 4×4 grid
    w = _box_weights((0.0, 0.0, 0.375, 0.25), 4).view(4, 4)
    assert torch.allclose(w.sum(), torch.tensor(1.0))
    assert torch.allclose(w[0, :2], torch.tensor([2 / 3, 1 / 3])) and w[1:].abs().sum() == 0 and w[0, 2:].sum() == 0


def test_clip_text_ids_end_in_the_towers_own_end_token(toy):
    """transformers pools CLIP text at the highest token id when eos_token_id == 2 (a legacy rule), and our
    SentencePiece EOS is 2: the text tower gets an end token of its own, past the vocabulary, and pools there."""
    from transformers import AutoTokenizer

    from training.demo.clip_pretrain import _caption_ids

    tok = AutoTokenizer.from_pretrained(str(toy[3]))
    ids, mask = _caption_ids(["a red circle", "a small blue square and a red circle"], tok, 8)
    ends = mask.sum(dim=1) - 1
    assert (ids[torch.arange(2), ends] == len(tok)).all()  # the last real token is the end token
    assert (ids.argmax(dim=1) == ends).all()  # and it is the highest id, so even the legacy rule finds it


def test_grounded_chats_put_the_scene_where_the_image_goes():
    import random

    from llava_local.templates import VICUNA_SYSTEM
    from training.datagen.world import make_scene
    from training.demo.corpus import _vqa_turns, doc_text, grounded_chat, scene_text

    scene = make_scene(0, 3)
    text = scene_text(scene)
    # every object, in reading order (the patch tokens' order), with its region
    assert [p.split(": ")[0] for p in text.rstrip(".").split(". ")] == [o.region for o in scene.objects]
    assert all(o.phrase() in text for o in scene.objects)
    chat = grounded_chat(scene, _vqa_turns(scene, random.Random(0), 4))
    plain = doc_text(chat)
    assert plain.startswith(VICUNA_SYSTEM) and f"USER: {text}\n" in plain and plain.count("ASSISTANT:") == 4
    answers = [t for t, trained in chat if trained]  # only the answers are trained on, each ending in </s>
    assert len(answers) == 4 and all(a.endswith("</s>") and text not in a for a in answers)


def test_text_eval_asks_the_base_llama_exactly_as_its_training_chats_lay_a_question_out(toy, tmp_path):
    from transformers import AutoTokenizer

    from training.demo.corpus import grounded_chat
    from training.demo.evaluate import eval_set, evaluate_text, text_prompt_ids
    from training.demo.lm_pretrain import pretrain_lm, tokenize_document

    _, _, texts, tok_dir = toy
    cfg = toy_lm()
    pretrain_lm(texts, tok_dir, tmp_path / "lm", cfg)
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "lm"))
    items = eval_set(3, 1000)
    for it in items:
        # the training chat of the same question and answer, cut where the answer begins
        train_ids, trained = tokenize_document(grounded_chat(it.scene, [(it.prompt, it.qa.answer)]), tok)
        assert text_prompt_ids(it, tok) == train_ids[: trained.index(True)]
    result = evaluate_text(tmp_path / "lm", 3, 1000, batch_size=4)  # two batches: left padding in play
    assert [(r["question"], r["answer"]) for r in result.items] == [(it.prompt, it.qa.answer) for it in items]
    assert set(result.per_type()) == {it.qa.qtype for it in items}


def test_vqa_weights_steer_the_question_mix_and_layout_turns_write_the_scene_out():
    import random

    from training.datagen.world import make_scene
    from training.demo.corpus import LAYOUT_REQUESTS, _vqa_turns, scene_text

    def kinds(weights):
        rng, out = random.Random(0), []
        for i in range(300):
            scene = make_scene(0, i)
            for q, a in _vqa_turns(scene, rng, 5, weights):
                kind = "layout" if q in LAYOUT_REQUESTS else "position" if q.startswith(("Where", "In which")) else "x"
                out.append(kind)
                if kind == "layout":
                    assert a == scene_text(scene)
        return out

    even, heavy = kinds(None), kinds({"position": 3, "layout": 1})
    assert "layout" not in even and heavy.count("layout") > 100
    assert heavy.count("position") / len(heavy) > 1.8 * even.count("position") / len(even)
    with pytest.raises(ValueError, match="unknown kind 'where'"):
        plain_mix(vqa_weights={"where": 2})


def test_layout_captions_add_a_stage1_record_per_scene_with_every_region(tmp_path):
    from training.demo.corpus import build_dataset, make_scenes

    scenes = make_scenes(0, 6)
    info = build_dataset(tmp_path, scenes, 32, seed=0, mix=plain_mix(layout_captions=1.0))
    recs = json.loads((tmp_path / "stage1.json").read_text())
    assert info["stage1"] == 12
    layout = {r["id"].split("-")[0]: r["conversations"][1]["value"] for r in recs if "-layout" in r["id"]}
    for s in scenes:
        regions = [p.split(": ")[0] for p in layout[s.key].rstrip(".").split(". ")]
        assert regions == [o.region for o in s.objects]


def test_description_order_changes_only_stage2_texts(tmp_path):
    from collections import Counter

    from training.datagen.teacher import ASK
    from training.datagen.world import COLOURS
    from training.demo.corpus import build_dataset, make_scenes, text_corpus
    from training.demo.evaluate import inventory

    scenes = make_scenes(0, 40)
    mix = plain_mix(conversation=1.0, counting=0.5)
    build_dataset(tmp_path / "reading", scenes, 32, seed=0, mix=mix)
    kind_mix = plain_mix(conversation=1.0, counting=0.5, description_order="kind")
    build_dataset(tmp_path / "kind", scenes, 32, seed=0, mix=kind_mix)
    for name in ("stage1.json", "listing.json", "lookup.json", "relation.json"):  # captions keep reading order
        assert (tmp_path / "reading" / name).read_text() == (tmp_path / "kind" / name).read_text()
    assert text_corpus(scenes, 0, mix) == text_corpus(scenes, 0, kind_mix)
    reading = json.loads((tmp_path / "reading" / "stage2.json").read_text())
    kind = json.loads((tmp_path / "kind" / "stage2.json").read_text())
    assert [r["id"] for r in reading] == [r["id"] for r in kind]  # same records, same draws: only texts differ
    by_key = {s.key: s for s in scenes}
    changed = described = 0
    for a, b in zip(reading, kind):
        for ta, tb in zip(a["conversations"], b["conversations"]):
            if ta["value"] == tb["value"]:
                continue
            changed += 1
            assert inventory(ta["value"]) == inventory(tb["value"])  # the same facts, reordered
        for question, turn in zip(b["conversations"][::2], b["conversations"][1::2]):
            if question["value"].splitlines()[-1] in ASK["description"]:  # a brief description in a VQA chat
                described += 1
                named = inventory(turn["value"])  # kind → count, in the order the text names them
                assert named == Counter((o.colour, o.shape) for o in by_key[b["id"].split("-")[0]].objects)
                ranks = [list(COLOURS).index(c) for c, _ in named]
                assert ranks == sorted(ranks)
    assert changed > 10 and described > 10
    with pytest.raises(ValueError, match="description_order"):
        plain_mix(description_order="size")


def test_relation_curriculum_asks_only_relations_and_answers_them_from_the_grid(tmp_path):
    import re

    from training.datagen.world import referable
    from training.demo.corpus import SHORT_ANSWER, build_dataset, make_scenes

    scenes = make_scenes(0, 30)
    build_dataset(tmp_path / "plain", scenes, 32, seed=0, mix=plain_mix())
    info = build_dataset(tmp_path / "more", scenes, 32, seed=0, mix=plain_mix(relations=1.0))
    for name in ("stage1.json", "listing.json", "lookup.json", "relation.json"):  # own streams: untouched
        assert (tmp_path / "plain" / name).read_text() == (tmp_path / "more" / name).read_text()
    more = json.loads((tmp_path / "more" / "stage2.json").read_text())
    plain = json.loads((tmp_path / "plain" / "stage2.json").read_text())
    assert sorted(map(json.dumps, plain)) == sorted(json.dumps(r) for r in more if "-relations" not in r["id"])
    assert info["stage2_kinds"]["relations"] > 0
    records = json.loads((tmp_path / "plain" / "relation.json").read_text())
    records += [r for r in more if "-relations" in r["id"]]
    assert info["relation"] == sum(r["id"].endswith(("-rel0", "-rel1")) for r in records) > 30
    by_key = {s.key: s for s in scenes}
    kinds = set()
    for r in records:
        objects = {ref: o for o, ref in referable(by_key[r["id"].split("-")[0]])}
        conv = r["conversations"]
        for human, gpt in zip(conv[::2], conv[1::2], strict=True):
            q = human["value"].removeprefix("<image>\n")
            assert q.endswith(f"\n{SHORT_ANSWER}")
            if m := re.match(r"Where is the (.+) relative to the (.+)\?\n", q):
                a, b = objects[m[1]], objects[m[2]]
                across = {-1: "to the left", 1: "to the right", 0: None}[(a.col > b.col) - (a.col < b.col)]
                up_down = {-1: "above", 1: "below", 0: None}[(a.row > b.row) - (a.row < b.row)]
                assert gpt["value"] == " and ".join(p for p in (across, up_down) if p)
                kinds.add("relative")
            else:
                m = re.match(r"Is the (.+) (to the left of|to the right of|above|below) the (.+)\?\n", q)
                a, b = objects[m[1]], objects[m[3]]
                holds = {"to the left of": a.col < b.col, "to the right of": a.col > b.col, "above": a.row < b.row,
                         "below": a.row > b.row}[m[2]]
                assert gpt["value"] == ("yes" if holds else "no")
                kinds.add("relation")
    assert kinds == {"relative", "relation"}


def test_counting_records_list_every_matching_place_and_count_them(tmp_path):
    import re

    from training.datagen.world import COLOURS, SHAPES
    from training.demo.corpus import SHORT_ANSWER, build_dataset, make_scenes

    scenes = make_scenes(0, 40)
    build_dataset(tmp_path / "plain", scenes, 32, seed=0, mix=plain_mix())
    build_dataset(tmp_path / "more", scenes, 32, seed=0, mix=plain_mix(counting=1.0))
    for name in ("stage1.json", "listing.json", "lookup.json", "relation.json"):  # own stream: untouched
        assert (tmp_path / "plain" / name).read_text() == (tmp_path / "more" / name).read_text()
    more = json.loads((tmp_path / "more" / "stage2.json").read_text())
    plain = json.loads((tmp_path / "plain" / "stage2.json").read_text())
    assert sorted(map(json.dumps, plain)) == sorted(json.dumps(r) for r in more if "-counting" not in r["id"])
    by_key = {sc.key: sc for sc in scenes}
    kind_re = (rf"(?:(?P<colour>{'|'.join(COLOURS)}) )?(?P<shape>{'|'.join(SHAPES)}|shape)s")
    counts, asked = [], set()
    for r in (r for r in more if "-counting" in r["id"]):
        scene = by_key[r["id"].split("-")[0]]
        conv = r["conversations"]
        for human, gpt in zip(conv[::2], conv[1::2], strict=True):
            q = human["value"].removeprefix("<image>\n")
            assert q.endswith(f"\n{SHORT_ANSWER}")
            m = re.search(kind_re, q)
            found = scene.matching(shape=None if m["shape"] == "shape" else m["shape"], colour=m["colour"])
            if q.startswith("Where are the "):
                places = [o.region for o in found]
                want = {0: "nowhere", 1: ", ".join(places)}.get(len(places), ", ".join(places[:-1]) + " and " +
                                                                  (places[-1] if places else ""))
                assert gpt["value"] == want
                asked.add("locate")
            else:
                assert gpt["value"] == str(len(found))
                asked.add("tally")
            counts.append(len(found))
    assert asked == {"locate", "tally"}
    assert sum(n >= 2 for n in counts) > len(counts) / 4  # several of a kind far more often than the teacher asks


def test_counting_records_ask_a_natural_share_of_their_counts_in_peoples_wordings(tmp_path):
    import re

    from training.datagen.teacher import ASK
    from training.demo.corpus import SHORT_ANSWER, build_dataset, make_scenes
    from training.demo.phrasings import NATURAL_ASK, numbers_named

    scenes = make_scenes(0, 60)
    build_dataset(tmp_path, scenes, 32, seed=0, mix=plain_mix(counting=1.0, natural=0.5))
    by_key = {sc.key: sc for sc in scenes}

    def pattern(template: str) -> re.Pattern[str]:  # a wording, any noun, any casing, with or without its "?"
        head, tail = template.rstrip("?.").split("{ref}")
        return re.compile(re.escape(head) + r"(?P<noun>[a-z ]+)s" + re.escape(tail) + r"[?.]?", re.IGNORECASE)

    natural = [pattern(t) for t in NATURAL_ASK["count"]]
    teacher_worded = [pattern(t) for t in ASK["count"]]
    seen = {"natural": 0, "teacher": 0, "sentence": 0}
    for r in json.loads((tmp_path / "stage2.json").read_text()):
        if "-counting" not in r["id"]:
            continue
        conv = r["conversations"]
        for human, gpt in zip(conv[::2], conv[1::2], strict=True):
            q = human["value"].removeprefix("<image>\n")
            if q.startswith("Where are the "):
                continue
            ask = q.removesuffix(f"\n{SHORT_ANSWER}")
            m = next((m for p in natural if (m := p.fullmatch(ask))), None)
            which = "natural" if m else "teacher"
            m = m or next(m for p in teacher_worded if (m := p.fullmatch(ask)))
            seen[which] += 1
            words = m["noun"].lower().split()
            colour, shape = (words[0], words[1]) if len(words) == 2 else (None, words[0])
            n = len(by_key[r["id"].split("-")[0]].matching(shape=None if shape == "shape" else shape, colour=colour))
            if ask == q:  # no short-answer instruction: the answer is the teacher's sentence, and says the count
                assert which == "natural" and gpt["value"].startswith("There ")
                assert numbers_named(gpt["value"]) == {n}
                seen["sentence"] += 1
            else:
                assert gpt["value"] == str(n)
    assert min(seen.values()) > 0 and 0.3 < seen["natural"] / (seen["natural"] + seen["teacher"]) < 0.7


def test_perfect_tower_features_say_exactly_what_is_in_each_cell():
    from training.datagen.world import COLOURS, SHAPES, SIZES
    from training.demo.corpus import make_scenes
    from training.demo.probes.perfect_tower import N_FEATURES, cell_features

    nc, ns, nz = len(COLOURS), len(SHAPES), len(SIZES)
    for scene in make_scenes(0, 20):
        f = cell_features(scene)
        assert f.shape == (9, N_FEATURES)
        assert torch.equal(f[:, nc + ns + nz + 1:], torch.eye(9))  # every row knows its cell
        occupied = {o.row * 3 + o.col: o for o in scene.objects}
        for c in range(9):
            row = f[c]
            if c not in occupied:
                assert row[nc + ns + nz] == 1 and row[: nc + ns + nz].sum() == 0
                continue
            o = occupied[c]
            assert list(COLOURS)[int(row[:nc].argmax())] == o.colour and row[:nc].sum() == 1
            assert list(SHAPES)[int(row[nc: nc + ns].argmax())] == o.shape and row[nc: nc + ns].sum() == 1
            assert list(SIZES)[int(row[nc + ns: nc + ns + nz].argmax())] == o.size and row[nc + ns + nz] == 0


def test_perfect_tower_harness_trains_and_asks_the_eval_questions(toy, tmp_path):
    from training.demo.lm_pretrain import pretrain_lm
    from training.demo.probes.perfect_tower import PerfectTowerConfig, run

    root, _, texts, tok_dir = toy
    pretrain_lm(texts, tok_dir, tmp_path / "lm", toy_lm(steps=2))
    cfg = PerfectTowerConfig(steps=2, batch_size=4, group_steps=2, eval_n=2)
    result = run(tmp_path / "lm", root / "data" / "stage2.json", cfg)
    assert len(result.items) >= 10 and {it["type"] for it in result.items} >= {"colour", "position"}
    assert 0.0 <= result.overall() <= 1.0


def test_lookup_probe_asks_one_position_question_in_each_form_and_trains(toy, tmp_path):
    from transformers import AutoTokenizer

    from training.datagen import teacher
    from training.datagen.world import CELL_OF_REGION, make_scene, referable
    from training.demo.lm_pretrain import pretrain_lm
    from training.demo.probes.lookup_probe import BAG_LEVEL, ProbeConfig, encode_example, encode_listing, probe

    _, _, texts, tok_dir = toy
    pretrain_lm(texts, tok_dir, tmp_path / "lm", toy_lm(steps=2))
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "lm"))
    image_id = tok.convert_tokens_to_ids("<image>")
    scene = next(s for i in range(50) if len((s := make_scene(0, i)).objects) >= 3)
    qa = teacher.sample_qa(scene, random.Random(0), "position")
    obj = next(o for o in scene.objects if o.region == qa.answer)
    for form in ("ref", "question", "chat"):  # the question forms; "list" names every object, below
        ex = encode_example(scene, qa, form, tok, image_id)
        ids, labels = ex["input_ids"].tolist(), ex["labels"].tolist()
        assert ids.count(image_id) == 9 and len(ids) == len(labels)
        answer = [t for t in labels if t >= 0]
        assert ids[len(ids) - len(answer):] == answer  # the answer closes the example, nothing else is trained
        prompt = tok.decode([t for t in ids[: len(ids) - len(answer)] if t != image_id], skip_special_tokens=True)
        if form == "ref":
            row, col = CELL_OF_REGION[qa.answer]
            assert answer == [len(tok) - 10 + 3 * row + col] and (obj.row, obj.col) == (row, col)
            assert prompt.strip() in (obj.shape, f"{obj.colour} {obj.shape}", obj.phrase())
        else:
            assert tok.decode(answer, skip_special_tokens=True).strip() == qa.answer
            assert qa.question in prompt and (("USER:" in prompt) == (form == "chat"))
    ex = encode_listing(scene, random.Random(1), tok, image_id)
    answer = tok.decode([t for t in ex["labels"].tolist() if t >= 0], skip_special_tokens=True)
    entries = [e.strip() for e in answer.split(".") if e.strip()]
    assert sorted(entries) == sorted(f"{ref}: {o.region}" for o, ref in referable(scene))
    assert ex["input_ids"].tolist().count(image_id) == 9
    curve = probe(tmp_path / "lm", ProbeConfig(form="question", steps=2, batch_size=4, every=1, eval_n=6,
                                               warm_form="list", warm_steps=1, warm_share=0.5), log=lambda s: None)
    assert [c[0] for c in curve] == [1, 2] and all(0 <= a <= 1 and 0 <= w <= 1 for _, a, w in curve)
    assert abs(BAG_LEVEL - 0.4567) < 1e-4


def _tiny_tower(path, patch_size):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    CLIPVisionModel(CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     image_size=30, patch_size=patch_size)).save_pretrained(str(path))
    return path


def test_lookup_probe_reads_a_real_towers_tokens(toy, tmp_path):
    from training.datagen.world import make_scene
    from training.demo.lm_pretrain import pretrain_lm
    from training.demo.probes.lookup_probe import ProbeConfig, TowerFeatures, main, probe

    _, _, texts, tok_dir = toy
    pretrain_lm(texts, tok_dir, tmp_path / "lm", toy_lm(steps=1))
    tower = _tiny_tower(tmp_path / "tower", 10)  # 30 px, patch 10: one token per grid cell
    feats = TowerFeatures(tower)
    a, b = feats(make_scene(0, 1)), feats(make_scene(0, 2))
    assert a.shape == (9, 16) and not torch.equal(a, b)  # the scene's own pixels, not a constant
    curve = probe(tmp_path / "lm", ProbeConfig(form="chat", steps=2, batch_size=4, every=2, eval_n=4, tower=str(tower),
                                               projector_lr=1e-2, warm_form="list", warm_steps=1), log=lambda s: None)
    assert [c[0] for c in curve] == [2]
    with pytest.raises(ValueError, match="3x3"):
        TowerFeatures(_tiny_tower(tmp_path / "t2", 15))  # 2x2 tokens cannot stand for the 3x3 grid
    assert main(["--lm", str(tmp_path / "lm"), "--tower", str(tmp_path / "nope")]) == 2
    assert main(["--lm", str(tmp_path / "lm"), "--tower", str(tmp_path / "t2"), "--steps", "1"]) == 2


def test_each_llava_stage_starts_from_the_last_stage_before_it_that_the_recipe_runs(tmp_path):
    from dataclasses import replace

    from training.demo.recipe import Recipe

    cfg = load_recipe(RECIPE_YAML)

    def starts(c):
        r = Recipe(c, tmp_path, tmp_path / "out", {})
        return [r._previous(s).name for s in ("listing", "lookup", "relation", "stage2", "final", "polish")]

    tail = ["stage2", "final"]
    assert starts(cfg) == ["stage1", "listing", "lookup", "relation", *tail]
    assert starts(replace(cfg, relation="")) == ["stage1", "listing", "lookup", "lookup", *tail]
    assert starts(replace(cfg, listing="")) == ["stage1", "stage1", "lookup", "relation", *tail]
    assert starts(replace(cfg, lookup="")) == ["stage1", "listing", "listing", "relation", *tail]
    assert starts(replace(cfg, listing="", lookup="", relation="")) == ["stage1"] * 4 + tail
    assert starts(replace(cfg, final=""))[-1] == "stage2"  # polish alone starts from stage 2

    def last(**off):
        return Recipe(replace(cfg, **dict.fromkeys(off, "")), tmp_path, tmp_path / "out", {})._last_llava().name

    # without the second pass, stage 2's model is the bundle's
    assert last() == "polish" and last(polish=1) == "final" and last(final=1, polish=1) == "stage2"
    assert Recipe(replace(cfg, lookup=""), tmp_path, tmp_path / "out", {}).stage_lookup() == {
        "skipped": "no stages.lookup in the recipe"}


@pytest.mark.parametrize("stage", ["stage1", "listing", "lookup", "relation", "stage2", "final", "polish"])
def test_command_line_overrides_reach_their_stage(stage, tmp_path, capsys):
    from training.demo.recipe import main

    # An unknown key is refused by the stage's config loader, before any file is read: the error names the key
    # only if the override got through to that stage.
    rc = main(["--work", str(tmp_path), "--out", str(tmp_path / "out"), "--from", stage, "--to", stage,
               f"--{stage}", "optim.no_such_key=1"])
    assert rc != 0
    assert "optim.no_such_key" in capsys.readouterr().err


def test_tower_probe_reads_what_the_tokens_hold_and_nothing_else(toy, tmp_path):
    from training.datagen.world import make_scene
    from training.demo.probes.perfect_tower import _SHAPE0, _SIZE0, cell_features
    from training.demo.probes.tower_probe import cell_tokens, main, probe, probe_tokens

    # Perfect features name colour and shape: the probe must read both back on held-out scenes.
    train, test = cell_tokens(cell_features, 0, 200), cell_tokens(cell_features, 1000, 60)
    assert train.tokens.shape == (len(train.sizes), cell_features(make_scene(0, 0)).shape[1])
    perfect = probe_tokens(train, test)
    assert perfect["shape"]["accuracy"] == 1.0 and perfect["colour"]["accuracy"] == 1.0

    # The same features with the shape one-hot blanked: colour still read, shape only by chance (1 in 4).
    def shapeless(scene):
        f = cell_features(scene).clone()
        f[:, _SHAPE0:_SIZE0] = 0
        return f

    blind = probe_tokens(cell_tokens(shapeless, 0, 200), cell_tokens(shapeless, 1000, 60))
    assert blind["colour"]["accuracy"] == 1.0 and blind["shape"]["accuracy"] < 0.5
    assert blind["shape"]["confusions"]

    # A real (tiny, untrained) tower goes through the same path; a directory that is no model is one error line.
    report = probe(_tiny_tower(tmp_path / "tower", 10), train_n=20, test_n=10)
    assert set(report["shape"]["by_size"]) <= {"small", "large"} and 0 <= report["shape"]["accuracy"] <= 1
    assert main([str(tmp_path / "nope")]) == 2


def test_the_report_says_whether_the_run_started_from_nothing(tmp_path):
    """A bundle's manifest carries the report's `run`: one go from nothing is `from: data` into an empty work dir."""
    from dataclasses import replace

    from training.demo.recipe import Recipe

    cfg = replace(load_recipe(RECIPE_YAML), scenes=3)
    work = tmp_path / "work"
    first = Recipe(cfg, work, tmp_path / "out", {}).run("data", "data")
    assert first["run"] == {"from": "data", "empty_work_dir": True}
    again = Recipe(cfg, work, tmp_path / "out", {}).run("data", "data")  # same work dir, its data already there
    assert again["run"] == {"from": "data", "empty_work_dir": False}
    restart = Recipe(cfg, work, tmp_path / "out", {}).run("tokenizer", "tokenizer")
    assert restart["run"]["from"] == "tokenizer" and set(restart["stages"]) == {"data", "tokenizer"}
