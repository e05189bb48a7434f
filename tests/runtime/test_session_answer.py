"""ChatSession.answer (a whole conversation at once, as a server receives it), extra stop strings and the OpenAI-style
penalties, on the real tiny bundle."""

from __future__ import annotations

import pytest

from llava_local import ChatSession, GenerationConfig
from llava_local.errors import ImageError, TemplateError, UsageError
from llava_local.events import Finished, ImageEncoded, PromptProcessed
from llava_local.templates import Turn

GREEDY = GenerationConfig(temperature=0, max_tokens=12)


def _run(events):
    events = list(events)
    assert isinstance(events[-1], Finished)
    return events, events[-1]


def test_answer_equals_ask_and_reuses_the_resent_history(rt_model, rt_images):
    m = rt_model
    png = rt_images[0].read_bytes()
    asked = ChatSession(m, GREEDY)
    a1 = _run(asked.ask("What is this?", images=[png]))[1].text
    a2 = _run(asked.ask("And the colour?"))[1].text
    asked.clear()

    s = ChatSession(m, GREEDY)
    ev, fin = _run(s.answer([Turn("user", "What is this?", 1)], [png]))
    assert fin.text == a1 and [type(e) for e in ev[:2]] == [ImageEncoded, PromptProcessed]
    calls, rows = m.vision.calls, m.engine.rows_decoded
    # the client resends everything, with the answer stripped as clients do
    turns = [Turn("user", "What is this?", 1), Turn("assistant", fin.text.strip()), Turn("user", "And the colour?")]
    ev, fin2 = _run(s.answer(turns, [png]))
    assert fin2.text == a2
    assert m.vision.calls == calls and not any(isinstance(e, ImageEncoded) for e in ev)  # not encoded again
    pp = next(e for e in ev if isinstance(e, PromptProcessed))
    assert pp.n_reused >= fin.n_prompt_tokens and pp.n_new < 40  # the image rows were not prefilled again
    assert m.engine.rows_decoded - rows <= pp.n_new + fin2.n_generated
    assert s.turns == [*turns, Turn("assistant", a2)] and len(s.image_ids) == 1

    # an edited first question: everything from the edit on is decoded again, the image rows stay
    ev, _ = _run(s.answer([Turn("user", "What is that?", 1)], [png]))
    pp = next(e for e in ev if isinstance(e, PromptProcessed))
    assert 0 < pp.n_reused < fin.n_prompt_tokens and m.vision.calls == calls


def test_answer_checks_before_changing_anything(rt_model, rt_images):
    s = ChatSession(rt_model, GREEDY)
    _run(s.answer([Turn("user", "Hi")]))
    before = (list(s.turns), list(s.image_ids), list(rt_model.kv))
    with pytest.raises(ImageError):
        s.answer([Turn("user", "What is this?", 1)], [b"not an image"])
    with pytest.raises(UsageError):
        s.answer([Turn("user", "Hi"), Turn("assistant", "Hello")])  # nothing to answer
    with pytest.raises(UsageError):
        s.answer([Turn("user", "What is this?", 1)], [])  # the image is missing
    with pytest.raises(TemplateError):
        s.answer([Turn("assistant", "Hello"), Turn("user", "Hi")])
    assert (s.turns, s.image_ids, rt_model.kv) == before


def test_an_image_from_the_embedding_cache_is_not_encoded_again(rt_model, rt_images):
    png = rt_images[1].read_bytes()
    _run(ChatSession(rt_model, GREEDY).answer([Turn("user", "What is this?", 1)], [png]))
    calls = rt_model.vision.calls
    ev, _ = _run(ChatSession(rt_model, GREEDY).answer([Turn("user", "Describe it.", 1)], [png]))
    assert rt_model.vision.calls == calls
    assert [e.cached for e in ev if isinstance(e, ImageEncoded)] == [True]


def test_extra_stop_strings(rt_model):
    s = ChatSession(rt_model, GenerationConfig(temperature=0, max_tokens=40))
    full = _run(s.answer([Turn("user", "Tell me more.")]))[1]
    assert full.stop_reason == "length" and len(full.text) > 10
    stop = full.text[6:9]
    s.stop = (stop,)
    cut = _run(s.answer([Turn("user", "Tell me more.")]))[1]
    assert cut.stop_reason == "stop" and cut.text == full.text[:full.text.index(stop)]
    assert s.turns[-1] == Turn("assistant", cut.text)


def test_frequency_and_presence_penalties_change_greedy_answers(rt_model):
    def answer(**kw) -> str:
        s = ChatSession(rt_model, GenerationConfig(temperature=0, max_tokens=60, repeat_last_n=60, **kw))
        return _run(s.answer([Turn("user", "Tell me more.")]))[1].text

    plain = answer()
    assert answer() == plain
    assert answer(frequency_penalty=2.0) != plain
    assert answer(presence_penalty=2.0) != plain
    with pytest.raises(UsageError):
        GenerationConfig(frequency_penalty=2.5)


class _SetAfter:
    """A cancel flag that reads as set from its (n+1)-th check on: a client leaving in the middle of a prefill."""

    def __init__(self, n: int) -> None:
        self.n = n

    def is_set(self) -> bool:
        self.n -= 1
        return self.n < 0


def test_cancel_stops_a_long_prefill_between_chunks(tmp_path):
    import tinyllava

    from llava_local import RuntimeConfig, open_model

    # A context above the model's training context is refused, so this test's bundle is trained for 2048 tokens.
    bundle = tinyllava.build_bundle(tmp_path / "long", ctx=2048)
    with open_model(bundle, RuntimeConfig(device="cpu", n_threads=1, n_ctx=2048)) as m:
        long = [Turn("user", "the " * 900)]
        s = ChatSession(m, GREEDY)
        rows = m.engine.rows_decoded
        ev, fin = _run(s.answer(long, cancel=_SetAfter(1)))  # one llama_decode call, then the client is gone
        pp = next(e for e in ev if isinstance(e, PromptProcessed))
        assert fin.stop_reason == "cancelled" and fin.n_generated == 0
        assert pp.n_new == m.engine.n_batch == m.engine.rows_decoded - rows < fin.n_prompt_tokens
        assert len(m.kv) == m.engine.n_past == m.engine.n_batch  # the bookkeeping matches the KV cache

        # the same question again: the decoded part is reused, and the answer is the one a fresh run gives
        ev, again = _run(s.answer(long))
        assert next(e for e in ev if isinstance(e, PromptProcessed)).n_reused == m.engine.n_batch
        s.clear()
        assert again.text == _run(ChatSession(m, GREEDY).answer(long))[1].text
