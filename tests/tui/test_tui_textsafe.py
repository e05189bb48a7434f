"""Model text reaches the TUI's Markdown without escape sequences or control characters (issue 23, item 7), streamed
chunk by chunk (a sequence split between chunks included), in the saved session and when a session is resumed."""

from __future__ import annotations

from tuifakes import FakeBackend
from tuihelpers import wait_until

from tui.app import LlavaApp
from tui.store import Store
from tui.widgets.assistant_turn import AssistantTurn
from tui.widgets.prompt import PromptInput

# The fake backend streams word by word: the window-title OSC is split between two chunks at its space.
HOSTILE = "Hi \x1b[2J\x1b]0;evil title\x07there \x1b]52;c;ZXZpbA==\x1b\\\x9b31mfriend\r\x08 ok\ttab\nline"
SAFE = "Hi there friend ok\ttab\nline"


def _controls(text: str) -> list[str]:
    return [c for c in text if (ord(c) < 32 and c not in "\n\t") or 0x7F <= ord(c) <= 0x9F]


async def test_streamed_and_resumed_answers_are_sanitized(store: Store, red_png):
    fake = FakeBackend(answers=[HOSTILE])
    app = LlavaApp(fake.as_backend(), store, images=[str(red_png)], preview="halfcell")
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.session is not None, what="model open")
        app.query_one(PromptInput).text = "Say something"
        await pilot.press("enter")
        await wait_until(pilot, lambda: not app.busy and len(app.history) == 2, what="answer")
        turn = app.query(AssistantTurn).last()
        assert turn.text == SAFE
        assert not _controls(turn.query_one("Markdown").source)
        session_id = app.session_id
    assert store.messages(session_id)[-1].text == SAFE
    # a session saved by an older version with the raw text in it is cleaned when shown again
    turn = AssistantTurn(HOSTILE)
    assert turn.text == SAFE
