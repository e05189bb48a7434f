"""The app on a damaged sessions database (real SQLite files, the fake engine): `--session N` and Ctrl+S keep
working, the user is told what happened, and nothing is lost."""

from __future__ import annotations

from pathlib import Path

from tuifakes import FakeBackend
from tuihelpers import notifications, wait_until

from llava_local.config import GenerationConfig
from tui.app import LlavaApp
from tui.screens.sessions import SessionsScreen
from tui.store import Message, Store

PAGE = 4096


def _app(fake: FakeBackend, store: Store, **kw) -> LlavaApp:
    return LlavaApp(fake.as_backend(), store, preview="halfcell", **kw)


def _session_with_bad_settings(store: Store, settings_sql: str) -> int:
    sid = store.create_session("cats", "tiny", {"temperature": 0.7}, None)
    store.save_turn(sid, Message("user", "what?"), Message("assistant", "a cat", (), "eos", {"tps": 3.0}))
    store._db.execute("UPDATE sessions SET settings = ? WHERE id = ?", (settings_sql, sid))
    return sid


async def test_resume_and_sessions_screen_with_settings_that_are_not_json(fake, store):
    sid = _session_with_bad_settings(store, "{not json")
    app = _app(fake, store, resume=str(sid))
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.session_id == sid, what="the session to resume")
        assert [m.text for m in app.history] == ["what?", "a cat"]
        assert app.generation == GenerationConfig()  # unreadable settings: the defaults
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: isinstance(app.screen, SessionsScreen), what="the sessions screen")
        await pilot.press("escape")
        assert app.is_running


async def test_settings_of_the_wrong_type_keep_the_current_ones(fake, store):
    sid = _session_with_bad_settings(store, '{"temperature": "hot", "top_k": 1.5}')
    app = _app(fake, store, resume=str(sid), generation=GenerationConfig(temperature=0.0))
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.session_id == sid, what="the session to resume")
        assert app.generation.temperature == 0.0 and len(app.history) == 2
        await wait_until(pilot, lambda: any("saved settings" in m for _, m in notifications(app)), what="a warning")


async def test_corrupt_pages_are_reported_and_sessions_survive(fake, tmp_path: Path):
    data = tmp_path / "data"
    s = Store(data)
    for i in range(40):
        sid = s.create_session(f"chat {i}", "tiny", {}, None)
        s.save_turn(sid, Message("user", f"q{i} " + "x" * 300), Message("assistant", f"a{i}"))
    s.close()
    db = data / "sessions.db"
    raw = bytearray(db.read_bytes())
    raw[-3 * PAGE:-PAGE] = b"\xa5" * (2 * PAGE)
    db.write_bytes(bytes(raw))
    store = Store(data)
    try:
        app = _app(fake, store, resume="1")
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_until(pilot, lambda: app.session is not None, what="the model")
            await wait_until(pilot, lambda: any("damaged" in m for _, m in notifications(app)), what="the notice")
            (severity, message), = [(sv, m) for sv, m in notifications(app) if "damaged" in m]
            assert severity == "warning" and store.damaged_copy.name in message
            await pilot.press("ctrl+s")
            await wait_until(pilot, lambda: isinstance(app.screen, SessionsScreen), what="the sessions screen")
            assert app.is_running
        assert store.damaged_copy.read_bytes() == bytes(raw)
        assert 0 < len(store.sessions()) < 40
    finally:
        store.close()


async def test_a_database_that_fails_mid_chat_is_a_notification(fake, store):
    """The disk goes bad after opening: Ctrl+S, rename and saving a turn each say so; the chat goes on."""
    from tui.widgets.prompt import PromptInput

    app = _app(fake, store)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.session is not None, what="the model")
        store._db.close()  # every later call fails the way a broken disk makes SQLite fail
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: any("sessions database" in m for _, m in notifications(app)),
                         what="the error")
        assert not isinstance(app.screen, SessionsScreen) and app.is_running
        app.query_one(PromptInput).text = "still there?"
        await pilot.press("enter")
        await wait_until(pilot, lambda: any("could not save the turn" in m for _, m in notifications(app)),
                         what="the save error")
        assert app.is_running and not app.busy
