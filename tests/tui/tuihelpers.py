"""Pilot helpers: poll until a condition holds (one `pilot.pause()` is not enough for thread workers)."""

from __future__ import annotations

import time
from collections.abc import Callable


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
