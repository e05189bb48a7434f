"""A progress line on stderr: finished/total, accepted, rejects by reason, backend errors, rate and ETA.

Contract: `Progress.update(outcome)` is called from one thread per finished job; on a terminal the line is
redrawn in place at most every 0.2 s, elsewhere (CI logs, pipes) a full line is printed every `interval`
seconds. `finish()` prints the final line. Nothing is written when `enabled` is False.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import TextIO


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    """Counts per outcome ("ok", a reject reason, "backend_error") for `total` jobs, `skipped` already done."""

    def __init__(self, label: str, total: int, skipped: int = 0, stream: TextIO | None = None,
                 enabled: bool = True, interval: float = 10.0, clock=time.monotonic) -> None:
        self.label, self.total, self.skipped = label, total, skipped
        self.stream = stream if stream is not None else sys.stderr
        self.enabled, self.clock = enabled, clock
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = 0.2 if self.tty else interval
        self.counts: Counter[str] = Counter()
        self.start = self._last = clock()

    @property
    def finished(self) -> int:
        return sum(self.counts.values())

    def line(self) -> str:
        """The current status line."""
        done = self.skipped + self.finished
        rejects = {k: v for k, v in self.counts.items() if k not in ("ok", "backend_error")}
        parts = [f"{self.label} {done}/{self.total}", f"ok {self.counts['ok']}"]
        if rejects:
            detail = ", ".join(f"{k} {v}" for k, v in sorted(rejects.items(), key=lambda kv: -kv[1]))
            parts.append(f"rejected {sum(rejects.values())} ({detail})")
        if self.counts["backend_error"]:
            parts.append(f"failed {self.counts['backend_error']}")
        elapsed = max(self.clock() - self.start, 1e-9)
        rate = self.finished / elapsed
        eta = (self.total - done) / rate if rate > 0 else 0.0
        parts.append(f"{rate:.1f}/s ETA {_hms(eta)}")
        return " | ".join(parts)

    def update(self, outcome: str) -> None:
        """Record one finished job and maybe redraw."""
        self.counts[outcome] += 1
        now = self.clock()
        if self.enabled and now - self._last >= self.interval:
            self._last = now
            self._emit(final=False)

    def _emit(self, final: bool) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K" + self.line() + ("\n" if final else ""))
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self._emit(final=True)
