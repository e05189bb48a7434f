"""ChatSession on a real tiny bundle (llama.cpp + ONNX Runtime): KV reuse across turns, equality with a fresh run,
the embedding cache, context overflow, cancel, regenerate, clear, restore."""

from __future__ import annotations

import shutil
import threading

import pytest

from llava_local import ChatSession, GenerationConfig, RuntimeConfig, open_model
from llava_local.errors import ContextOverflow, ImageError, UsageError
from llava_local.events import Finished, ImageEncoded, PromptProcessed, TextChunk
from llava_local.templates import Turn

GREEDY = GenerationConfig(temperature=0, max_tokens=12)


def _ask(session, *args, **kw):
    events = list(session.ask(*args, **kw))
    fin = events[-1]
    assert isinstance(fin, Finished)
    assert "".join(e.text for e in events if isinstance(e, TextChunk)) == fin.text
    return events, fin


def _first(events, kind):
    return next(e for e in events if isinstance(e, kind))


def _image_end(session, turns, ids):
    items = session._items(turns, ids)
    return max(i for i, k in enumerate(items) if isinstance(k, tuple)) + 1


def test_follow_up_reuses_kv_and_equals_a_fresh_run(rt_model, rt_images):
    m, eng = rt_model, rt_model.engine
    s = ChatSession(m, GREEDY)
    ev1, fin1 = _ask(s, "What is this?", images=[rt_images[0]])
    assert _first(ev1, ImageEncoded).cached is False
    assert m.vision.calls == 1
    assert fin1.n_generated > 0

    rows0 = eng.rows_decoded
    ev2, fin2 = _ask(s, "What color is it?")
    pp = _first(ev2, PromptProcessed)
    assert m.vision.calls == 1  # no encoder run
    assert not any(isinstance(e, ImageEncoded) for e in ev2)
    assert pp.n_reused >= _image_end(s, s.turns[:3], s.image_ids)  # the image rows stayed in the KV cache
    generated_decoded = len(m.kv) - fin2.n_prompt_tokens
    assert eng.rows_decoded - rows0 == pp.n_new + generated_decoded  # nothing else was decoded
    assert pp.n_new < 40

    # A fresh session over the whole conversation (everything decoded from position 0) gives the same answer.
    fresh = ChatSession.restore(m, s.turns[:3], [rt_images[0]], generation=GREEDY)
    rows1 = eng.rows_decoded
    ev3 = list(fresh.regenerate())
    assert _first(ev3, PromptProcessed).n_reused == 0
    assert eng.rows_decoded - rows1 >= fin2.n_prompt_tokens
    assert ev3[-1].text == fin2.text
    assert m.vision.calls == 1  # restore found the embedding in the cache


def test_tokenization_matches_training(rt_model, rt_images):
    s = ChatSession(rt_model, GREEDY)
    turns = [Turn("user", "Q", 2)]
    items = s._items(turns, ["a" * 64, "b" * 64])
    eng = rt_model.engine
    assert items[0] == eng.bos and items.count(eng.bos) == 1  # BOS only on the first chunk
    n = rt_model.manifest.vision.tokens_per_image
    first_img = items.index(("a" * 64, 0))
    assert items[first_img:first_img + n] == [("a" * 64, r) for r in range(n)]
    # each chunk is tokenized on its own: the chunk after an image starts with SentencePiece's "▁" before "\n"
    after = items[first_img + n:items.index(("b" * 64, 0))]
    assert after == eng.tokenize("\n", add_bos=False)


def test_images_of_different_turns(rt_model, rt_images):
    s = ChatSession(rt_model, GREEDY)
    _ask(s, "First?", images=[rt_images[0]])
    ev, _ = _ask(s, "And this one?", images=[rt_images[1]])
    assert [e.cached for e in ev if isinstance(e, ImageEncoded)] == [False]
    assert rt_model.vision.calls == 2
    assert len(s.image_ids) == 2 and s.turns[2].n_images == 1
    assert _first(ev, PromptProcessed).n_reused >= _image_end(s, s.turns[:1], s.image_ids[:1])


def test_regenerate_greedy_repeats_and_decodes_only_the_tail(rt_model, rt_images):
    s = ChatSession(rt_model, GREEDY)
    _, fin = _ask(s, "What is this?", images=[rt_images[0]])
    ev = list(s.regenerate())
    assert _first(ev, PromptProcessed).n_new == 1  # the whole prompt was still in the KV cache
    assert ev[-1].text == fin.text
    assert len(s.turns) == 2


def test_bad_image_raises_before_any_state_change(rt_model, rt_images, tmp_path):
    s = ChatSession(rt_model, GREEDY)
    _ask(s, "What is this?", images=[rt_images[0]])
    turns, ids, kv = list(s.turns), list(s.image_ids), list(rt_model.kv)
    bogus = tmp_path / "fake.png"
    bogus.write_text("not an image")
    for bad in (tmp_path / "missing.png", bogus, tmp_path):
        with pytest.raises(ImageError):
            s.ask("and now?", images=[rt_images[1], bad])
    assert (s.turns, s.image_ids, rt_model.kv) == (turns, ids, kv)
    with pytest.raises(UsageError):
        s.ask(123)  # type: ignore[arg-type]


def test_context_overflow_then_session_still_works(rt_bundle, rt_images):
    with open_model(rt_bundle, RuntimeConfig(device="cpu", n_ctx=64, n_threads=1)) as m:
        s = ChatSession(m, GenerationConfig(temperature=0, max_tokens=200), system="")
        _, fin = _ask(s, "Hi?", images=[rt_images[0]])
        assert fin.stop_reason in ("length", "eos", "stop") and fin.context_used <= 64
        assert s.context_max == 64
        before = (list(s.turns), list(s.image_ids))
        with pytest.raises(ContextOverflow, match="context holds 64"):
            s.ask("tell me more " * 20)
        with pytest.raises(ContextOverflow):
            s.ask("and this?", images=[rt_images[1], rt_images[2]])
        assert (s.turns, s.image_ids) == before
        s.clear()
        assert s.context_used == 0 and s.turns == []
        _, fin2 = _ask(s, "Hi?", images=[rt_images[0]])
        assert fin2.text == fin.text


def test_cancel_keeps_partial_answer_and_consistent_kv(rt_model, rt_images):
    gen = GenerationConfig(temperature=0, max_tokens=30)
    s = ChatSession(rt_model, gen)
    stop = threading.Event()
    chunks = []
    for ev in s.ask("What is this?", images=[rt_images[0]], cancel=stop):
        if isinstance(ev, TextChunk):
            chunks.append(ev.text)
            if len(chunks) == 3:
                stop.set()
        last = ev
    assert last.stop_reason == "cancelled"
    assert s.turns[-1] == Turn("assistant", "".join(chunks)) and last.n_generated < 30
    _, fin = _ask(s, "Why?")
    fresh = ChatSession.restore(rt_model, s.turns[:3], [rt_images[0]], generation=gen)
    assert list(fresh.regenerate())[-1].text == fin.text


def test_dropping_the_stream_keeps_turns_consistent(rt_model, rt_images):
    s = ChatSession(rt_model, GenerationConfig(temperature=0, max_tokens=30))
    it = s.ask("What is this?", images=[rt_images[0]])
    for ev in it:
        if isinstance(ev, TextChunk):
            break
    it.close()
    assert [t.role for t in s.turns] == ["user", "assistant"]
    _ask(s, "More?")  # the next ask re-syncs the KV cache


def test_embedding_cache_on_disk_serves_a_new_model_and_restore(rt_bundle, rt_images, tmp_path):
    with open_model(rt_bundle, RuntimeConfig(device="cpu", n_threads=1)) as m:
        s = ChatSession(m, GREEDY)
        _, fin = _ask(s, "What is this?", images=[rt_images[0]])
        turns = list(s.turns)
        image_id = s.image_ids[0]
    with open_model(rt_bundle, RuntimeConfig(device="cpu", n_threads=1)) as m2:  # empty memory cache
        copy = tmp_path / "copy.png"
        shutil.copy(rt_images[0], copy)
        r = ChatSession.restore(m2, turns[:1], [copy], generation=GREEDY)
        copy.unlink()
        r2 = ChatSession.restore(m2, turns[:1], [image_id], generation=GREEDY)  # file gone, id known
        assert m2.vision.calls == 0 and m2.cache.hits_disk == 1
        assert list(r.regenerate())[-1].text == fin.text
        assert list(r2.regenerate())[-1].text == fin.text
        with pytest.raises(ImageError, match="not in the embedding cache"):
            ChatSession.restore(m2, turns[:1], ["f" * 64])
        with pytest.raises(UsageError, match="1 images"):
            ChatSession.restore(m2, turns[:1], [])


def test_sessions_sharing_a_model_take_turns(rt_model, rt_images):
    a = ChatSession(rt_model, GREEDY)
    _, fa = _ask(a, "What is this?", images=[rt_images[0]])
    b = ChatSession(rt_model, GREEDY)
    _ask(b, "Something else?", images=[rt_images[1]])
    ev, _ = _ask(a, "Again?")  # a's conversation is no longer in the KV cache: re-decoded, same result
    assert _first(ev, PromptProcessed).n_reused == 0
    assert a.turns[1].text == fa.text


def test_system_prompt_change_re_decodes(rt_model, rt_images):
    s = ChatSession(rt_model, GREEDY)
    _ask(s, "What is this?", images=[rt_images[0]])
    s.system = "Answer in one word."
    ev, _ = _ask(s, "Sure?")
    # only the tokens the two system texts share at the start survive (BOS, "▁A"); the image is re-prefilled
    assert _first(ev, PromptProcessed).n_reused < _image_end(s, s.turns[:1], s.image_ids) - 16


def test_sampling_is_seeded_and_regenerate_reseeds(rt_model, rt_images):
    gen = GenerationConfig(temperature=1.2, top_k=0, top_p=1.0, repeat_penalty=1.3, seed=5, max_tokens=12)
    _, a = _ask(ChatSession(rt_model, gen), "What is this?", images=[rt_images[0]])
    s = ChatSession(rt_model, gen)
    _, b = _ask(s, "What is this?", images=[rt_images[0]])
    assert a.text == b.text
    assert list(s.regenerate())[-1].text != b.text
    s.generation = gen.with_(seed=6)
    _, c = _ask(ChatSession(rt_model, s.generation), "What is this?", images=[rt_images[0]])
    assert c.text != a.text


def _copy_with(rt_bundle, tmp_path, edit=None, gguf_bytes=None):
    import json

    from llava_local.manifest import file_entry

    b = tmp_path / "b"
    shutil.copytree(rt_bundle, b)
    if gguf_bytes is not None:
        (b / "llm-f32.gguf").write_bytes(gguf_bytes)
    d = json.loads((b / "manifest.json").read_text())
    d["files"]["llm-f32.gguf"] = file_entry(b / "llm-f32.gguf")
    if edit:
        edit(d)
    (b / "manifest.json").write_text(json.dumps(d))
    return b


def test_broken_gguf_is_an_error_not_a_crash(rt_bundle, tmp_path):
    import struct

    from llava_local.errors import BundleError, EngineError

    # a garbage header is refused before llama.cpp sees it (llava_local.integrity.check_gguf) ...
    b = _copy_with(rt_bundle, tmp_path / "garbage", gguf_bytes=b"GGUF" + b"\0" * 4000)
    with pytest.raises(BundleError, match="llm-f32.gguf: GGUF version 0"):
        open_model(b, RuntimeConfig(device="cpu"))
    # ... and a well-formed GGUF that is no model (no keys, no tensors) is llama.cpp's refusal, still an error
    b = _copy_with(rt_bundle, tmp_path / "empty", gguf_bytes=b"GGUF" + struct.pack("<IQQ", 3, 0, 0) + b"\0" * 4000)
    with pytest.raises(EngineError, match="could not load llm-f32.gguf"):
        open_model(b, RuntimeConfig(device="cpu"))


def test_vision_and_llm_width_mismatch_is_a_bundle_error(rt_bundle, tmp_path):
    from llava_local.errors import BundleError

    b = _copy_with(rt_bundle, tmp_path, edit=lambda d: d["vision"].update(embed_dim=32))
    with pytest.raises(BundleError, match="rows of 32 but the language model takes 64"):
        open_model(b, RuntimeConfig(device="cpu"))


def test_images_wider_than_n_batch_are_chunked_in_sessions(rt_bundle, rt_images, monkeypatch):
    """16 image rows with n_batch 5: four decode calls per image; one call would abort the process."""
    import llava_local.bundle as bundle_mod

    with open_model(rt_bundle, RuntimeConfig(device="cpu")) as m:
        _, ref = _ask(ChatSession(m, GREEDY), "What is this?", images=[rt_images[0]])
    monkeypatch.setattr(bundle_mod, "N_BATCH", 5)
    with open_model(rt_bundle, RuntimeConfig(device="cpu")) as m:
        assert m.engine.n_batch == 5 and m.manifest.vision.tokens_per_image > 5
        _, got = _ask(ChatSession(m, GREEDY), "What is this?", images=[rt_images[0]])
    assert got.text == ref.text
