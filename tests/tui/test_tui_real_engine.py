"""End-to-end pilot tests: the real app on the real engine (llama.cpp + ONNX Runtime) with the tiny bundle.

The backend is the production one (`tui.backend.llava_backend`); the test only wraps `open_model` to keep a
handle on each opened model, so it can read the vision encoder's call counter (`model.vision.calls`).
"""

from __future__ import annotations

from pathlib import Path

from tuihelpers import notifications, wait_until

from llava_local.config import GenerationConfig, RuntimeConfig
from llava_local.events import ImageEncoded
from tui.app import LlavaApp
from tui.backend import Backend, llava_backend
from tui.store import Store
from tui.widgets.assistant_turn import AssistantTurn
from tui.widgets.prompt import PromptInput
from tui.widgets.user_turn import UserTurn

GREEDY = GenerationConfig(temperature=0, max_tokens=24)


class Paced:
    """A real ChatSession whose event stream the consumer reads at most every `delay` seconds.

    The tiny model writes hundreds of tokens in milliseconds; pacing the reader (not the engine) gives a person's
    Esc key time to land mid-answer. The engine still checks the cancel event between its own tokens."""

    def __init__(self, session, delay: float = 0.0) -> None:
        object.__setattr__(self, "_s", session)
        object.__setattr__(self, "delay", delay)

    def __getattr__(self, name):
        return getattr(self._s, name)

    def __setattr__(self, name, value):
        setattr(self._s, name, value)

    def _paced(self, events):
        import time

        for e in events:
            yield e
            if self.delay:
                time.sleep(self.delay)

    def ask(self, *a, **kw):
        return self._paced(self._s.ask(*a, **kw))

    def regenerate(self, *a, **kw):
        return self._paced(self._s.regenerate(*a, **kw))


class Opened:
    """The real backend, remembering the models it opened (to read `model.vision.calls`)."""

    def __init__(self) -> None:
        self.models: list = []
        self.sessions: list[Paced] = []
        real = llava_backend(RuntimeConfig(device="cpu", n_threads=2))

        def open_model(name):
            m = real.open_model(name)
            self.models.append(m)
            return m

        def new_session(*a):
            self.sessions.append(Paced(real.new_session(*a)))
            return self.sessions[-1]

        def restore_session(*a):
            self.sessions.append(Paced(real.restore_session(*a)))
            return self.sessions[-1]

        self.backend = Backend(open_model, new_session, restore_session)


async def ask(pilot, text: str, n_messages: int) -> None:
    app = pilot.app
    app.query_one(PromptInput).text = text
    await pilot.press("enter")
    await wait_until(pilot, lambda: len(app.history) >= n_messages and not app.busy, timeout=60, what=text)


async def test_real_engine_conversation_cancel_resume(bundle: Path, store: Store, red_png: Path, blue_png: Path):
    opened = Opened()
    app = LlavaApp(opened.backend, store, model=str(bundle), images=[str(red_png)], generation=GREEDY,
                   preview="halfcell")
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.session is not None, timeout=60, what="model open")
        assert app.status.status.model == opened.models[0].info.name
        # 1. ask about an image: the answer streams into the last AssistantTurn
        await ask(pilot, "What is in this image?", 2)
        answer = app.history[-1]
        assert answer.role == "assistant" and answer.stop_reason in ("eos", "stop", "length")
        assert app.query(AssistantTurn).last().text == answer.text
        chunks = [e for e in app.events if type(e).__name__ == "TextChunk"]
        assert "".join(c.text for c in chunks) == answer.text
        assert app.status.status.context_used > 0 and app.status.status.tokens_per_s
        # 2. a second image mid-conversation
        app.query_one(PromptInput).text = f"/image {blue_png}"
        await pilot.press("enter")
        await pilot.pause()
        await ask(pilot, "And this one?", 4)
        assert len(app.query(UserTurn)) == 2 and app.session.turns[-2].n_images == 1
        assert opened.models[0].vision.calls == 2
        # 2b. regenerate the last answer (greedy: the same text again), replacing it on screen and on disk
        before = app.history[-1].text
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: not app.busy and len(app.query(AssistantTurn)) == 2, timeout=60,
                         what="regenerate")
        assert app.history[-1].text == before and len(store.messages(app.session_id)) == 4
        # 3. Esc cancels mid-answer; the partial answer is kept and marked
        app.session.generation = GenerationConfig(temperature=1.0, max_tokens=400, seed=3)
        object.__setattr__(app.session, "delay", 0.05)
        app.query_one(PromptInput).text = "Describe everything in detail."
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.busy and app.query(AssistantTurn).last().text, timeout=60,
                         what="first chunk")
        await pilot.press("escape")
        await wait_until(pilot, lambda: not app.busy, timeout=60, what="cancel")
        assert app.history[-1].stop_reason == "cancelled"
        assert app.query(AssistantTurn).last().has_class("stopped")
        assert app.session.turns[-1].text == app.history[-1].text  # the partial answer is kept by the engine too
        # 4. a bad path gives a notification, and the app keeps going
        app.query_one(PromptInput).text = "/image /no/such/photo.png"
        await pilot.press("enter")
        await pilot.pause()
        assert any(sev == "error" and "image not found" in m for sev, m in notifications(app))
        session_id = app.session_id
        n_messages = len(app.history)
    assert len(store.messages(session_id)) == n_messages == 6

    # 5. restart: a new app and a freshly opened model resume the session without re-encoding any image
    opened2 = Opened()
    app2 = LlavaApp(opened2.backend, store, model=str(bundle), resume=str(session_id), preview="halfcell")
    async with app2.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app2.session is not None and len(app2.history) == 6, timeout=60,
                         what="resume")
        assert [t.text for t in app2.session.turns] == [m.text for m in store.messages(session_id)]
        assert len(app2.session.image_ids) == 2
        app2.query_one(PromptInput).text = f"/image {red_png}"  # the first image again, sent with a follow-up
        await pilot.press("enter")
        await ask(pilot, "Is it the same as the first?", 8)
        encoded = [e for e in app2.events if isinstance(e, ImageEncoded)]
        assert encoded and all(e.cached for e in encoded)
        assert opened2.models[0].vision.calls == 0  # the encoder never ran after the restart
        assert app2.history[-1].stop_reason in ("eos", "stop", "length")
