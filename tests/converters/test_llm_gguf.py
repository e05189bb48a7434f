"""The GGUF writer: metadata read back with GGUFReader, logits vs transformers, tokenizer ids vs HF, quant types."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from converters import llm_gguf, quantize
from converters.layouts import load_checkpoint
from converters.torch_ref import build_llm
from converters.verify import TEXT_PROMPTS, _prompt_chunks, open_engine
from llava_local.engine import Engine
from llava_local.templates import get_template


def _field(reader: gguf.GGUFReader, key: str):
    f = reader.fields[key]
    if f.types[0] == gguf.GGUFValueType.ARRAY:
        if f.types[-1] == gguf.GGUFValueType.STRING:
            return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
        return [f.parts[i][0].item() for i in f.data]
    if f.types[0] == gguf.GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8")
    return f.parts[f.data[0]][0].item()


@pytest.fixture(scope="module")
def f32_gguf(tiny_hf_checkpoint, tmp_path_factory):
    ckpt = load_checkpoint(tiny_hf_checkpoint)
    return ckpt, llm_gguf.write_gguf(ckpt, tmp_path_factory.mktemp("gguf") / "llm-f32.gguf", "f32", name="tiny")


def test_metadata_reads_back(f32_gguf):
    ckpt, path = f32_gguf
    r = gguf.GGUFReader(str(path))
    assert _field(r, "general.architecture") == "llama" and _field(r, "general.name") == "tiny"
    assert _field(r, "general.file_type") == 0
    assert (_field(r, "llama.context_length"), _field(r, "llama.embedding_length"), _field(r, "llama.block_count"),
            _field(r, "llama.feed_forward_length"), _field(r, "llama.attention.head_count"),
            _field(r, "llama.attention.head_count_kv"), _field(r, "llama.rope.dimension_count")) == (
        1024, 256, 2, 512, 4, 2, 64)
    tokens, types = _field(r, "tokenizer.ggml.tokens"), _field(r, "tokenizer.ggml.token_type")
    # vocab padded to the 576 embedding rows; <image> is a control token at its HF id
    assert len(tokens) == len(types) == 576 == _field(r, "llama.vocab_size")
    assert tokens[512] == "<image>" and types[512] == gguf.TokenType.CONTROL
    assert tokens[575] == "[PAD575]" and types[575] == gguf.TokenType.UNUSED
    assert tokens[:3] == ["<unk>", "<s>", "</s>"] and types[3] == gguf.TokenType.BYTE
    assert _field(r, "tokenizer.ggml.model") == "llama"
    assert (_field(r, "tokenizer.ggml.bos_token_id"), _field(r, "tokenizer.ggml.eos_token_id")) == (1, 2)
    assert _field(r, "tokenizer.ggml.add_bos_token") is True
    assert _field(r, "llava_local.template") == "vicuna_v1" and _field(r, "llava_local.image_token_id") == 512
    assert "ASSISTANT:" in _field(r, "tokenizer.chat_template")
    names = {t.name for t in r.tensors}
    assert len(names) == 3 + 9 * 2 and {"token_embd.weight", "output.weight", "blk.1.ffn_down.weight"} <= names
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in r.tensors)


def test_chat_template_renders_like_llava_local(f32_gguf):
    import jinja2

    jinja = jinja2.Environment().from_string(llm_gguf.jinja_template("vicuna_v1"))
    got = jinja.render(messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                                 {"role": "user", "content": "Bye"}], add_generation_prompt=True)
    from llava_local.templates import Turn

    t = get_template("vicuna_v1")
    assert got == t.to_string(t.render([Turn("user", "Hi"), Turn("assistant", "Hello."), Turn("user", "Bye")]))


def test_llama_cpp_logits_match_transformers(f32_gguf):
    ckpt, path = f32_gguf
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ckpt.tokenizer_dir)
    llm = build_llm(ckpt)
    t = get_template("vicuna_v1")
    ids = list(tok(t.to_string(t.render(TEXT_PROMPTS[1]))).input_ids)
    with torch.no_grad():
        want = llm(torch.tensor([ids])).logits[0].numpy()
    with Engine(path, n_ctx=256) as run:
        got = run.decode_tokens(ids, logits="all")
    assert got.shape == (len(ids), run.n_vocab)
    assert np.abs(got - want).max() < 2e-2
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.98


def test_unpermuted_rope_breaks_logits(f32_gguf, tmp_path, monkeypatch):
    """The q/k permutation is what makes llama.cpp agree (this test fails if `permute` becomes a no-op)."""
    ckpt, good = f32_gguf
    monkeypatch.setattr(llm_gguf, "permute", lambda w, n_head, n_kv: w)
    bad = llm_gguf.write_gguf(ckpt, tmp_path / "bad.gguf", "f32")
    ids = list(range(1, 40))
    with Engine(good, n_ctx=256) as a, Engine(bad, n_ctx=256) as b:
        diff = np.abs(a.decode_tokens(ids, logits="all") - b.decode_tokens(ids, logits="all")).max()
    assert diff > 0.1


@pytest.mark.parametrize("fixture", ["tiny_hf_checkpoint", "tiny_c_checkpoint"])
def test_prompt_ids_equal_hf_and_llama_cpp(fixture, request, tmp_path):
    from transformers import AutoTokenizer

    ckpt = load_checkpoint(request.getfixturevalue(fixture))
    path = llm_gguf.write_gguf(ckpt, tmp_path / "llm.gguf", "f16")
    tok = AutoTokenizer.from_pretrained(ckpt.tokenizer_dir)
    t = get_template(ckpt.template)
    texts = [(c, i == 0) for i, c in enumerate(_prompt_chunks(ckpt.template, "What is in the image? 42 shapes!"))]
    texts += [(t.to_string(t.render(turns)), True) for turns in TEXT_PROMPTS]  # multi-turn: "</s>" inside
    texts += [("  leading spaces, ünïcødé and\ttabs\n\nnewlines", True), ("<image>\nafter a special", False)]
    with Engine(path, n_ctx=256) as run:
        for text, bos in texts:
            assert run.tokenize(text, bos) == list(tok(text, add_special_tokens=bos).input_ids), text
    if fixture == "tiny_c_checkpoint":
        r = gguf.GGUFReader(str(path))
        assert (_field(r, "tokenizer.ggml.model"), _field(r, "tokenizer.ggml.pre")) == ("gpt2", "gpt-2")
        assert len(_field(r, "tokenizer.ggml.merges")) > 100


def test_quant_types(f32_gguf, tmp_path):
    _, path = f32_gguf
    q8 = quantize.tensor_types(quantize.quantize(path, tmp_path / "q8.gguf", "q8_0"))
    assert set(q8) == {"Q8_0", "F32"} and q8["F32"] == 5  # norms stay F32
    q4 = quantize.tensor_types(quantize.quantize(path, tmp_path / "q4km.gguf", "q4_k_m"))
    # hidden/ffn are multiples of 256, so no tensor falls back to a legacy quant type
    assert q4["Q4_K"] >= 10 and q4["Q6_K"] >= 1 and set(q4) == {"Q4_K", "Q6_K", "F32"}


def test_verification_engine_uses_the_cpu_probe(f32_gguf, tmp_path, monkeypatch, llava_home):
    """Verification's engine takes llama.cpp's extra buffer types from `cpuprobe.extra_buffers_ok` (cached per
    machine and quant), as the runtime does; a q4_0 model (which CPU_REPACK holds on x86 and ARM) decodes the same
    with them on and off."""
    from llava_local.cpuprobe import REPACK_ENV, amx_possible, extra_buffers_safe, repack_pays

    _, path = f32_gguf
    q4 = quantize.quantize(path, tmp_path / "llm-q4_0.gguf", "q4_0")
    ids = list(range(1, 30))
    with open_engine(q4, "q4_0", 256) as run:
        chosen, got = run.extra_buffers, run.decode_tokens(ids, logits="all")
    amx = amx_possible()
    assert (llava_home / "cache" / "cpu-probe.json").is_file() == amx  # probed only where AMX can be chosen
    if not amx:
        assert chosen is repack_pays()  # CPU_REPACK alone: on unless measured slower (AVX-512)
    other = not chosen and extra_buffers_safe(q4, "q4_0")  # the opposite setting, where it cannot crash
    monkeypatch.setenv(REPACK_ENV, "1" if other else "0")
    with open_engine(q4, "q4_0", 256) as run:
        assert run.extra_buffers is other
        plain = run.decode_tokens(ids, logits="all")
    # the repacked kernels order the sums differently: ~0.07 logits here, against whole logits for a wrong setup
    assert np.abs(got - plain).max() < 0.2 and (got.argmax(-1) == plain.argmax(-1)).mean() > 0.9
