"""Prompts, label masks and batching: golden masks, strict tokenization, truncation, data order."""

from __future__ import annotations

import pytest

from llava_local.errors import TemplateError, UsageError
from llava_local.preprocess import PreprocessConfig
from llava_local.templates import Piece, get_template
from training.dataset import IGNORE_INDEX, LlavaDataset, collate, encode, parse_record, truncate
from training.distributed import micro_batches
from training.model import load_tokenizer

N_IMG = 16  # tiny CLIP: (56 / 14)² patch tokens, CLS dropped

TWO_TURNS = {"id": "golden", "image": "x.png", "conversations": [
    {"from": "human", "value": "<image>\nWhat colour is the ball?"},
    {"from": "gpt", "value": "The ball is red."},
    {"from": "human", "value": "Where is it?"},
    {"from": "gpt", "value": "On the left."}]}


@pytest.fixture(scope="module")
def tok(tiny_base):
    return load_tokenizer(str(tiny_base.llm_dir))


def _spans(labels):
    """Contiguous runs of positions whose label is kept."""
    runs, start = [], None
    for i, lab in enumerate(labels + [IGNORE_INDEX]):
        if lab != IGNORE_INDEX and start is None:
            start = i
        elif lab == IGNORE_INDEX and start is not None:
            runs.append((start, i))
            start = None
    return runs


def test_golden_two_turn_mask(tok):
    sample = parse_record(TWO_TURNS, 0)
    pieces = get_template("vicuna_v1").render(list(sample.turns), add_generation_prompt=False)
    image_id = tok.convert_tokens_to_ids("<image>")
    ids, labels = encode(pieces, tok, image_id, N_IMG, "golden")
    assert len(ids) == len(labels)
    # The prompt is the runtime's: chunk 0 with BOS, 16 image slots, chunk 1 without BOS.
    chunk0, chunk1 = get_template("vicuna_v1").to_string(pieces).split("<image>")
    assert ids == tok(chunk0)["input_ids"] + [image_id] * N_IMG + tok(chunk1, add_special_tokens=False)["input_ids"]
    assert ids[0] == tok.bos_token_id and labels[0] == IGNORE_INDEX
    # Exactly two supervised spans: each answer with its end token </s>, nothing else.
    spans = _spans(labels)
    assert len(spans) == 2
    assert [tok.decode(ids[a:b]) for a, b in spans] == ["The ball is red.</s>", "On the left.</s>"]
    assert all(ids[b - 1] == tok.eos_token_id for _, b in spans)
    assert all(labels[i] == ids[i] for a, b in spans for i in range(a, b))
    # System text, "USER:", the image, the questions and "ASSISTANT:" are all masked.
    assert all(labels[i] == IGNORE_INDEX for i, t in enumerate(ids) if t == image_id)
    masked_text = tok.decode([t for t, lab in zip(ids, labels) if lab == IGNORE_INDEX and t != image_id])
    assert "What colour is the ball?" in masked_text and "Where is it?" in masked_text
    assert masked_text.count("ASSISTANT:") == 2 and "red" not in masked_text and "left" not in masked_text


def test_plain_stage1_mask_is_caption_and_newline(tok):
    rec = {"id": "c", "image": "x.png", "conversations": [
        {"from": "human", "value": "Describe.\n<image>"}, {"from": "gpt", "value": "A red square."}]}
    pieces = get_template("plain").render(list(parse_record(rec, 0).turns), add_generation_prompt=False)
    image_id = tok.convert_tokens_to_ids("<image>")
    ids, labels = encode(pieces, tok, image_id, N_IMG)
    assert ids[:1 + N_IMG] == [tok.bos_token_id] + [image_id] * N_IMG  # the instruction text is dropped
    assert labels[:1 + N_IMG] == [IGNORE_INDEX] * (1 + N_IMG)
    assert tok.decode(labels[1 + N_IMG:]).strip() == "A red square." and ids[-1] == tok.convert_tokens_to_ids("<0x0A>")


def test_tokenization_mismatch_is_an_error(tok):
    # A piece boundary inside the word "ball" ("b" | "all"): the prefix does not tokenize to a prefix of the whole.
    pieces = [Piece("text", "USER: hi ASSISTANT: The b"), Piece("text", "all is red.</s>", trainable=True)]
    with pytest.raises(TemplateError, match="tokenization mismatch"):
        encode(pieces, tok, tok.convert_tokens_to_ids("<image>"), N_IMG, "bad")


def test_truncation_never_splits_an_image():
    ids = [1, 5, 6] + [9] * 4 + [7, 8, 10]
    labels = list(ids)
    out_ids, out_labels, kept = truncate(ids, labels, 1, 9, 4, max_len=5)
    assert out_ids == [1, 5, 6] and kept == 0 and out_labels == [1, 5, 6]
    out_ids, _, kept = truncate(ids, labels, 1, 9, 4, max_len=8)
    assert out_ids == ids[:8] and kept == 1
    assert truncate(ids, labels, 1, 9, 4, max_len=50) == (ids, labels, 1)


def test_dataset_items_and_collate(tok, tiny_data, tiny_base):
    import json

    records = json.loads(tiny_data[1].read_text())
    ds = LlavaDataset(records, tiny_data[1].parent, tok, get_template("vicuna_v1"), PreprocessConfig(size=56),
                      N_IMG, context_length=256)
    with_image = next(i for i, r in enumerate(records) if "image" in r)
    text_only = next(i for i, r in enumerate(records) if "image" not in r)
    a, b = ds[with_image], ds[text_only]
    assert a["pixel_values"].shape == (1, 3, 56, 56) and b["pixel_values"].shape == (0, 3, 56, 56)
    batch = collate([a, b], pad_id=0)
    n = max(len(a["input_ids"]), len(b["input_ids"]))
    assert batch["input_ids"].shape == (2, n) and batch["pixel_values"].shape == (1, 3, 56, 56)
    assert int(batch["attention_mask"].sum()) == len(a["input_ids"]) + len(b["input_ids"])
    short = LlavaDataset(records, tiny_data[1].parent, tok, get_template("vicuna_v1"), PreprocessConfig(size=56),
                         N_IMG, context_length=20)
    item = short[with_image]
    assert item["truncated"] and len(item["input_ids"]) <= 20 and item["pixel_values"].shape[0] == 0


@pytest.mark.parametrize("rec, words", [
    ({"id": "x"}, "conversations"),
    ({"id": "x", "conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]}, "alternate"),
    ({"id": "x", "image": ["a.png", "b.png"], "conversations": [
        {"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]}, "1 <image> marks but 2"),
    ({"id": "x", "conversations": [{"from": "human", "value": "q"}]}, "no human/gpt exchange"),
])
def test_malformed_records_name_the_sample(rec, words):
    with pytest.raises(UsageError, match=words):
        parse_record(rec, 0)


def test_data_order_is_deterministic_grouped_and_complete():
    lengths = [(i * 37) % 101 for i in range(50)]
    a = micro_batches(lengths, seed=3, epoch=0, micro=2, accum=3, world=2, group_by_length=True)
    assert a == micro_batches(lengths, seed=3, epoch=0, micro=2, accum=3, world=2, group_by_length=True)
    assert a != micro_batches(lengths, seed=3, epoch=1, micro=2, accum=3, world=2, group_by_length=True)
    assert len(a) == 50 // 12 and all(len(step) == 6 for step in a)
    flat = [i for step in a for mb in step for i in mb]
    assert len(set(flat)) == len(flat) == 48
    for step in a:  # sorted by length inside each global batch
        lens = [lengths[i] for mb in step for i in mb]
        assert lens == sorted(lens, reverse=True)


def test_length_groups_spanning_steps_pad_less_and_keep_every_sample_once():
    """One process, one micro-batch per step: sorting inside a step changes nothing, so the grouping has to span
    steps (`group_steps`) to cut padding; the steps of a group then come in a random order."""
    lengths = [(i * 7919) % 500 + 20 for i in range(640)]
    kw = dict(seed=1, epoch=0, micro=8, accum=1, world=1, group_by_length=True)
    one, grouped = micro_batches(lengths, **kw), micro_batches(lengths, **kw, group_steps=16)
    assert one == micro_batches(lengths, **kw, group_steps=1)  # the default: LLaVA's per-batch sorting

    def padded(steps):  # tokens computed when every micro-batch is padded to its longest sample
        return sum(len(mb) * max(lengths[i] for i in mb) for step in steps for mb in step)

    flat = [i for step in grouped for mb in step for i in mb]
    assert sorted(flat) == sorted(i for step in one for mb in step for i in mb) and len(set(flat)) == len(flat)
    assert padded(grouped) < 0.75 * padded(one)
    assert grouped == micro_batches(lengths, **kw, group_steps=16)  # deterministic, so a resume replays it
    # the longest samples do not always come first: the order of a group's steps is shuffled
    firsts = [max(lengths[i] for i in step[0]) for step in grouped[:16]]
    assert firsts != sorted(firsts, reverse=True)
    ungrouped = micro_batches(lengths, **{**kw, "group_by_length": False}, group_steps=16)
    assert ungrouped == micro_batches(lengths, **{**kw, "group_by_length": False})  # no grouping, no effect
