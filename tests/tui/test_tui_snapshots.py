"""SVG snapshots (pytest-textual-snapshot) of the main screen, the sessions screen and the help screen.

Deterministic: the fake backend (fixed answers and statistics), a fixed image, a fixed terminal size, half-block
image previews (no terminal graphics protocol), cursor blink off, and fixed timestamps on the sessions screen.
Update with `pytest tests/tui/test_tui_snapshots.py --snapshot-update` only after looking at the report.
"""

from __future__ import annotations

from pathlib import Path

from tuifakes import FakeBackend
from tuihelpers import wait_until

from llava_local.config import GenerationConfig
from tui.app import LlavaApp
from tui.screens.sessions import SessionsScreen
from tui.store import Message, Store
from tui.widgets.prompt import PromptInput

SIZE = (100, 34)
ANSWER = ("The image shows a **red square** with a small white square in its top-left corner.\n\n"
          "- colour: red\n- shape: square")


def _app(store: Store, images: list[Path]) -> LlavaApp:
    fake = FakeBackend(answers=[ANSWER])
    return LlavaApp(fake.as_backend(), store, model="tiny-demo", images=[str(p) for p in images],
                    generation=GenerationConfig(temperature=0), preview="halfcell")


async def _ready(pilot) -> None:
    await wait_until(pilot, lambda: pilot.app.session is not None)
    pilot.app.query_one(PromptInput).cursor_blink = False


def test_main_screen(snap_compare, store: Store, red_png: Path):
    app = _app(store, [red_png])

    async def run_before(pilot) -> None:
        await _ready(pilot)
        app.query_one(PromptInput).text = "What is in this image?"
        await pilot.press("enter")
        await wait_until(pilot, lambda: len(app.history) == 2 and not app.busy)
        app.query_one(PromptInput).set_text("/se")
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_suggested_questions_on_an_empty_conversation(snap_compare, store: Store):
    fake = FakeBackend(suggested_prompts=("Describe the image briefly.", "How many circles are there?",
                                          "Where is the diamond?"))
    app = LlavaApp(fake.as_backend(), store, model="tiny-demo", generation=GenerationConfig(temperature=0),
                   preview="halfcell")

    async def run_before(pilot) -> None:
        await _ready(pilot)
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_sessions_screen(snap_compare, store: Store, red_png: Path):
    t0 = 1_790_000_000.0
    for i, (title, n) in enumerate([("Shapes on a table", 4), ("What colour is the circle?", 2), ("Untitled", 0)]):
        sid = store.create_session(title, "tiny-demo", {}, None)
        for k in range(n // 2):
            store.save_turn(sid, Message("user", f"q{k}"), Message("assistant", f"a{k}", (), "eos"))
        store._db.execute("UPDATE sessions SET updated = ? WHERE id = ?", (t0 - 3600 * 5 ** i, sid))
    app = _app(store, [])

    async def run_before(pilot) -> None:
        await _ready(pilot)
        await app.push_screen(SessionsScreen(store, current=1, now=t0))
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_help_screen(snap_compare, store: Store):
    app = _app(store, [])

    async def run_before(pilot) -> None:
        await _ready(pilot)
        await pilot.press("f1")
        await pilot.pause()

    assert snap_compare(app, terminal_size=(100, 50), run_before=run_before)
