"""The llama.cpp engine on a real (tiny, random) GGUF: chunking, validation before native asserts, trimming,
sampling; and the UTF-8 / stop-string text stream."""

from __future__ import annotations

import numpy as np
import pytest

from llava_local.config import GenerationConfig
from llava_local.engine import Engine, Sampler
from llava_local.errors import ContextOverflow, EngineError
from llava_local.textstream import TextStream


@pytest.fixture
def gguf(rt_bundle):
    return rt_bundle / "llm-f32.gguf"


def _rows(n, d=64, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def _run(engine, rows):
    engine.decode_tokens(engine.tokenize("USER: ", add_bos=True), logits=False)
    engine.decode_embeddings(rows)
    engine.decode_tokens(engine.tokenize("\nWhat is this? ASSISTANT:", add_bos=False))
    return engine.logits()


def test_embeddings_chunked_over_n_batch_give_the_same_logits(gguf):
    rows = _rows(37)
    # 37 rows → 10 decode calls of ≤ 4 rows; one call with more rows than n_batch would abort the process
    small = Engine(gguf, n_ctx=256, n_batch=4, n_threads=1)
    big = Engine(gguf, n_ctx=256, n_batch=256, n_threads=1)
    try:
        a, b = _run(small, rows), _run(big, rows)
        assert small.n_past == big.n_past
        assert small.n_batch == 4
        np.testing.assert_allclose(a, b, atol=1e-4)
        assert np.abs(a).max() > 1.0  # real logits, not zeros
        # and the image actually matters:
        big.clear()
        c = _run(big, _rows(37, seed=1))
        assert np.abs(c - b).max() > 1e-2
    finally:
        small.close()
        big.close()


def test_all_logits_across_chunks_match_one_token_at_a_time(gguf):
    """`decode_tokens(ids, logits="all")` in chunks of n_batch (what the converter's parity checks use): row i is
    position i's logits, as decoding the ids one by one gives them (a row from the wrong chunk or position is off by
    whole logits, not by float noise), and `logits()` is the last row."""
    probe = Engine(gguf, n_ctx=128, n_threads=1)
    ids = probe.tokenize("USER: What is the color of this shape? ASSISTANT: the image is a", add_bos=True) * 2
    probe.close()
    with Engine(gguf, n_ctx=128, n_batch=16, n_threads=1) as e:  # several chunks, the last one short
        got = e.decode_tokens(ids, logits="all")
        last, n_past = e.logits(), e.n_past
        assert e.decode_tokens([], logits="all").shape == (0, e.n_vocab)
    with Engine(gguf, n_ctx=128, n_threads=1) as e:
        steps = []
        for t in ids:
            e.decode_tokens([t])
            steps.append(e.logits())
    assert len(ids) > 32 and len(ids) % 16 and got.shape == (len(ids), len(steps[0])) and n_past == len(ids)
    assert np.array_equal(last, got[-1])
    assert np.abs(got - np.stack(steps)).max() < 1e-3


def test_trim_and_redecode_reproduce_logits(gguf):
    e = Engine(gguf, n_ctx=256, n_batch=16, n_threads=1)
    try:
        ref = _run(e, _rows(20))
        n = e.n_past
        tail = e.tokenize("\nWhat is this? ASSISTANT:", add_bos=False)
        e.trim(n - len(tail))
        assert e.n_past == n - len(tail) and not e.has_logits
        e.decode_tokens(tail)
        np.testing.assert_allclose(e.logits(), ref, atol=1e-5)
    finally:
        e.close()


def test_user_reachable_native_asserts_are_errors(gguf):
    e = Engine(gguf, n_ctx=64, n_batch=8, n_threads=1)
    try:
        with pytest.raises(EngineError, match="rows of 64"):
            e.decode_embeddings(_rows(3, d=32))
        with pytest.raises(EngineError, match="NaN"):
            e.decode_embeddings(np.full((2, 64), np.nan, np.float32))
        with pytest.raises(EngineError, match="outside the vocabulary"):
            e.decode_tokens([1, e.n_vocab])
        with pytest.raises(EngineError, match="outside the vocabulary"):
            e.decode_tokens([-1])
        e.decode_tokens(list(range(3, 63)))
        with pytest.raises(ContextOverflow, match="context holds 64"):
            e.decode_embeddings(_rows(5))
        assert e.n_past == 60
        e.decode_tokens([5, 6])  # still usable
        assert e.n_past == 62
        with pytest.raises(EngineError, match="no logits"):
            e.trim(10)
            e.logits()
    finally:
        e.close()


def test_tokenize_parses_specials_and_bos_only_when_asked(gguf):
    e = Engine(gguf, n_ctx=64, n_threads=1)
    try:
        ids = e.tokenize("A.</s>B", add_bos=True)
        assert ids[0] == e.bos and e.eos in ids and ids.count(e.bos) == 1
        assert e.bos not in e.tokenize("A", add_bos=False)
        assert b"".join(e.piece(t) for t in e.tokenize("What is this?", add_bos=False)) == b" What is this?"
        assert e.is_eog(e.eos) and not e.is_eog(ids[1])
    finally:
        e.close()


def test_greedy_sampler_is_argmax_and_dist_is_seeded(gguf):
    e = Engine(gguf, n_ctx=128, n_threads=1)
    try:
        e.decode_tokens(e.tokenize("USER: hi ASSISTANT:", add_bos=True))
        logits = e.logits()
        with Sampler(e, GenerationConfig(temperature=0)) as s:
            assert s.sample() == int(np.argmax(logits))

        def draw(seed):
            with Sampler(e, GenerationConfig(temperature=1.5, top_k=0, top_p=1.0, seed=seed)) as s:
                return [s.sample() for _ in range(20)]

        assert draw(7) == draw(7)
        assert draw(7) != draw(8)
    finally:
        e.close()


# -- text stream ------------------------------------------------------------------------------------------------
def test_stream_never_splits_utf8():
    s = TextStream([])
    data = " héllo ✓".encode()
    out = [s.push(data[i:i + 1])[0] for i in range(len(data))]
    assert "".join(out) + s.flush() == "héllo ✓"
    assert all("\ufffd" not in o for o in out)


def test_stream_holds_back_a_possible_stop_string():
    s = TextStream(["</s>", "USER:"])
    assert s.push(b" The cat<") == ("The cat", False)
    assert s.push(b"/") == ("", False)
    assert s.push(b"s") == ("", False)
    assert s.push(b">tail") == ("", True)
    assert s.text == "The cat"


def test_stream_releases_a_false_alarm():
    s = TextStream(["</s>"])
    assert s.push(b"a </") == ("a ", False)
    assert s.push(b"b>") == ("</b>", False)
    assert s.push(b" US") == (" US", False)
    assert s.flush() == ""
    assert s.text == "a </b> US"


def test_stream_flush_returns_held_text():
    s = TextStream(["USER:"])
    assert s.push(b"ok US") == ("ok ", False)
    assert s.flush() == "US"
    assert s.text == "ok US"


def test_lone_surrogates_tokenize(gguf):
    e = Engine(gguf, n_ctx=64, n_threads=1)
    try:
        assert e.tokenize("a \udcff b", add_bos=False)
    finally:
        e.close()
