"""A checkpoint whose LLaMA tokenizer was saved by transformers 5 (`tokenizer.json` only, no `tokenizer.model`).

transformers 5 writes a SentencePiece-style BPE: pieces with "▁" for spaces, `<0xHH>` byte fallback, merges,
and a Metaspace pre-tokenizer ("always" prefix for `legacy=True` tokenizers, as LLaVA's; "first" otherwise).
The converter turns it into GGUF tokenizer model "llama"; these tests convert the tiny llava-hf checkpoint so
re-saved and check that the bundle tokenizes prompts, as the runtime does (llama.cpp, chunk by chunk around the
images, BOS on the first chunk), into exactly transformers' ids.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import pytest

from converters import llm_gguf
from converters.layouts import load_checkpoint
from llava_local.engine import Engine
from llava_local.templates import Turn, get_template, text_chunks

TEXTS = [
    "  two leading spaces, double  spaces and trailing  ",
    "digits 0123456789, 3.14 and 2026-12-06",
    "accents: café, naïve, Ærøskøbing; CJK: 漢字かな한국어",
    "emoji 🦙🖼️👍🏽 and a family 👨‍👩‍👧",
    "new\nlines\n\nand\ttabs\n",
    "What is in the image? There are 3 shapes: a red circle and a blue box.",
]
# Conversations as a user builds them: images before the text, answers that end in "</s>".
CONVERSATIONS = [[Turn("user", t, n_images=1)] for t in TEXTS] + [
    [Turn("user", TEXTS[0], n_images=2), Turn("assistant", TEXTS[2]), Turn("user", TEXTS[3])],
    [Turn("user", TEXTS[4]), Turn("assistant", TEXTS[1]), Turn("user", TEXTS[5], n_images=1)],
]
RAW = TEXTS + ["<image>\nan image token written in the text", "x", " x", "ASSISTANT: ok</s>USER: and?"]


def _resave(src: Path, dst: Path, **kwargs) -> Path:
    """Copy a checkpoint and replace its SentencePiece tokenizer by what transformers 5 saves for it."""
    from transformers import AutoTokenizer

    shutil.copytree(src, dst)
    tok = AutoTokenizer.from_pretrained(src, **kwargs)
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"):
        (dst / name).unlink(missing_ok=True)
    tok.save_pretrained(dst)
    assert not (dst / "tokenizer.model").exists()
    data = json.loads((dst / "tokenizer.json").read_text(encoding="utf-8"))
    assert data["model"]["type"] == "BPE" and data["model"]["byte_fallback"] and "<0x0A>" in data["model"]["vocab"]
    assert "Metaspace" in json.dumps(data["pre_tokenizer"])
    return dst


@pytest.fixture(scope="module")
def t5_checkpoint(tiny_hf_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _resave(tiny_hf_checkpoint, tmp_path_factory.mktemp("t5") / "checkpoint")


@pytest.fixture(scope="module")
def t5_bundle(t5_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from converters.bundle import ConvertOptions, convert
    from converters.cli import quiet_libraries

    out = tmp_path_factory.mktemp("t5-bundle") / "t5"
    with quiet_libraries():
        convert(ConvertOptions(src=t5_checkpoint, out=out, quants=("f16",), name="t5"), show_progress=False)
    return out


def _hf_ids(tok, text: str, bos: bool) -> list[int]:
    return list(tok(text, add_special_tokens=bos).input_ids)


def test_bundle_prompt_ids_equal_transformers(t5_checkpoint: Path, t5_bundle: Path):
    from transformers import AutoTokenizer

    from llava_local.bundle import open_model
    from llava_local.config import RuntimeConfig

    tok = AutoTokenizer.from_pretrained(t5_checkpoint)
    with open_model(t5_bundle, RuntimeConfig(device="cpu", n_threads=1)) as m:
        for turns in CONVERSATIONS:
            chunks = text_chunks(m.template.render(turns))
            assert len(chunks) == 1 + sum(t.n_images for t in turns)
            for i, chunk in enumerate(chunks):
                if chunk or i == 0:  # the runtime skips empty chunks between images
                    assert m.engine.tokenize(chunk, add_bos=i == 0) == _hf_ids(tok, chunk, i == 0), chunk
        for text in RAW:
            for bos in (True, False):
                assert m.engine.tokenize(text, add_bos=bos) == _hf_ids(tok, text, bos), text
        assert m.engine.tokenize("<image>", add_bos=False) == [tok.convert_tokens_to_ids("<image>")]


def test_gguf_tokenizer_metadata(t5_bundle: Path):
    r = gguf.GGUFReader(str(t5_bundle / "llm-f16.gguf"))

    def field(key):
        return r.fields[key].contents()

    assert field("tokenizer.ggml.model") == "llama"
    tokens, types, scores = field("tokenizer.ggml.tokens"), field("tokenizer.ggml.token_type"), \
        field("tokenizer.ggml.scores")
    T = gguf.TokenType
    assert (tokens[0], types[0]) == ("<unk>", T.UNKNOWN)
    assert [types[i] for i in (1, 2)] == [T.CONTROL, T.CONTROL]
    assert tokens[3 + 0x0A] == "<0x0A>" and all(types[i] == T.BYTE for i in range(3, 259))
    assert (tokens[512], types[512]) == ("<image>", T.CONTROL) and types[575] == T.UNUSED
    assert len(set(scores[259:512])) > 100  # merge ranks, not one flat score
    assert field("tokenizer.ggml.add_bos_token") is True and field("tokenizer.ggml.add_space_prefix") is True
    assert (field("tokenizer.ggml.bos_token_id"), field("tokenizer.ggml.eos_token_id")) == (1, 2)


def test_wrong_scores_change_the_ids(t5_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The corpus is sensitive to the scores: one flat score (gguf-py's LlamaHfVocab gives -1000 to every piece)
    makes llama.cpp merge greedily left to right instead of in merge-rank order."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(t5_checkpoint)
    monkeypatch.setattr(llm_gguf, "merge_scores", lambda merges, vocab: {})
    path = llm_gguf.write_gguf(load_checkpoint(t5_checkpoint), tmp_path / "flat.gguf", "f32")
    with Engine(path, n_ctx=256) as run:
        assert any(run.tokenize(t, True) != _hf_ids(tok, t, True) for t in TEXTS + ["\nWhat is this? ASSISTANT:"])


def test_non_legacy_tokenizer(tiny_hf_checkpoint: Path, tmp_path: Path):
    """legacy=False (Metaspace "first"): no "▁" after a special token or before a leading space. llama.cpp's
    SPM tokenizer always prefixes one there, so only prompts whose chunks have neither can match; ours do."""
    from transformers import AutoTokenizer

    ckpt_dir = _resave(tiny_hf_checkpoint, tmp_path / "checkpoint", legacy=False)
    assert '"first"' in (ckpt_dir / "tokenizer.json").read_text(encoding="utf-8")
    ckpt = load_checkpoint(ckpt_dir)
    path = llm_gguf.write_gguf(ckpt, tmp_path / "llm.gguf", "f32")
    tok = AutoTokenizer.from_pretrained(ckpt_dir)
    t = get_template(ckpt.template)
    with Engine(path, n_ctx=256) as run:
        for turns in CONVERSATIONS[:len(TEXTS)]:  # one user turn: no "</s>" inside a chunk
            for i, chunk in enumerate(text_chunks(t.render(turns))):
                assert run.tokenize(chunk, i == 0) == _hf_ids(tok, chunk, i == 0), chunk
