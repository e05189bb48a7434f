"""Helpers of the terminal-app tests: poll until a condition holds (one `pilot.pause()` is not enough for thread
workers), and a healthy sessions database to damage (`filled_store`, also used by tests/fuzz)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path


async def wait_until(pilot, predicate: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    """Pause the pilot until `predicate()` is true; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        await pilot.pause(0.02)


def notifications(app) -> list[tuple[str, str]]:
    """(severity, message) of the app's current notifications."""
    return [(n.severity, n.message) for n in app._notifications]


def filled_store(data: Path, n_sessions: int = 3, filler: int = 0) -> Path:
    """A healthy store with sessions of two turns each; returns the database path (WAL checkpointed)."""
    from tui.store import Message, Store

    s = Store(data)
    for i in range(n_sessions):
        sid = s.create_session(f"chat {i}", "tiny", {"temperature": 0.1 * i}, None)
        for j in range(2):
            s.save_turn(sid, Message("user", f"q{i}.{j} " + "x" * filler),
                        Message("assistant", f"a{i}.{j}", (), "eos", {"tps": 1.0}))
    s._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    s.close()
    return data / "sessions.db"
