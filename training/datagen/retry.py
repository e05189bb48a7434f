"""Retries with exponential backoff, and a shared rate limiter, for backend calls.

Contract: `call_with_retries(fn, policy)` calls `fn()`; on `Transient` it sleeps and tries again, up to
`policy.attempts` calls in all, then raises `GaveUp` carrying the last error. The wait before retry k
(k = 1, 2, ...) is `min(cap, base * 2**(k-1))` seconds scaled by a jitter in [0.5, 1], or the server's
Retry-After if it sent one (capped at `policy.max_retry_after`). `RateLimiter(rps)` spaces calls across all
threads at least 1/rps seconds apart. Both take `sleep`/`clock` callables so tests run without waiting.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


class Transient(Exception):
    """A failure worth retrying (HTTP 429/5xx, timeout, connection reset, unreadable body)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class GaveUp(Exception):
    """All attempts failed with transient errors."""


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to retry; times in seconds."""

    attempts: int = 5
    base: float = 0.5
    cap: float = 30.0
    max_retry_after: float = 120.0

    def delay(self, retry: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait before retry number `retry` (1-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        return min(self.cap, self.base * 2 ** (retry - 1)) * rng.uniform(0.5, 1.0)


def call_with_retries(fn: Callable[[], T], policy: RetryPolicy, sleep: Callable[[float], None] = time.sleep,
                      rng: random.Random | None = None, on_retry: Callable[[Transient], None] | None = None) -> T:
    """`fn()`, retried on `Transient` as the policy says."""
    rng = rng or random.Random()
    for attempt in range(1, policy.attempts + 1):
        try:
            return fn()
        except Transient as e:
            if attempt == policy.attempts:
                raise GaveUp(f"gave up after {attempt} attempts: {e}") from e
            if on_retry is not None:
                on_retry(e)
            sleep(policy.delay(attempt, e.retry_after, rng))
    raise AssertionError("unreachable")


class RateLimiter:
    """At most `rps` calls per second across threads (None or 0: unlimited)."""

    def __init__(self, rps: float | None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.interval = 1.0 / rps if rps else 0.0
        self._next = 0.0
        self._lock = threading.Lock()
        self._clock, self._sleep = clock, sleep

    def wait(self) -> None:
        """Block until this caller's slot comes."""
        if not self.interval:
            return
        with self._lock:  # reserve a slot, then sleep outside the lock
            now = self._clock()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            self._sleep(slot - now)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))
