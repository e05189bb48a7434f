"""Quit when the app's terminal goes away, instead of running on headless.

Contract: `watch_terminal(app)` starts a daemon thread that checks, once a second, that stdin is still a
terminal. When the terminal has been hung up (its window closed, tmux killed, the ssh connection dropped),
it cancels any answer in progress, points stdin/stdout/stderr at /dev/null and asks the app to exit; if the app
has not ended `GRACE_S` seconds later, the process exits with `HANGUP_EXIT` (128 + SIGHUP, what a shell
reports for a hung-up job).

Why a thread and not a Textual timer: after a hangup, reads return EOF and writes fail with EIO. SIGHUP
usually ends the process first, but one that ignores SIGHUP (started under `nohup`, or by a launcher that
sets it to SIG_IGN) keeps going: Textual's input thread then spins on EOF, and its output queue can fill up and
block the event loop that a timer would need. Data is safe on the hard path too: the store commits each turn in
its own transaction (SQLite WAL), so at most the answer being streamed at that moment is lost.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any

CHECK_S = 1.0  # how often to look at the terminal
GRACE_S = 3.0  # how long a clean exit may take before the hard one
HANGUP_EXIT = 128 + signal.SIGHUP


def terminal_alive(fd: int) -> bool:
    """True while `fd` is a terminal that has not been hung up (a hung-up tty is no longer a tty)."""
    return os.isatty(fd)  # False, never an error, for a closed or non-tty fd


def _silence_std_streams() -> None:
    """Point fds 0, 1, 2 at /dev/null, so Textual's reads see a quiet EOF and its writes succeed into nothing."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        try:
            os.dup2(null, fd)
        except OSError:
            pass
    os.close(null)


def _ask_exit(app: Any) -> None:
    try:
        app.call_from_thread(app.exit, HANGUP_EXIT)
    except Exception:  # the app is already shutting down
        pass


def watch_terminal(app: Any, fd: int | None = None) -> threading.Thread | None:
    """Start the watchdog for `app` (a running Textual App with a `cancel_answer()` method); None if no terminal."""
    if fd is None:
        if sys.__stdin__ is None:
            return None
        fd = sys.__stdin__.fileno()
    if not terminal_alive(fd):
        return None

    def watch() -> None:
        while terminal_alive(fd):
            time.sleep(CHECK_S)
        app.cancel_answer()
        _silence_std_streams()
        # call_from_thread waits for the loop to run the call; if the loop is stuck, only that helper waits.
        threading.Thread(target=_ask_exit, args=(app,), name="terminal-watch-exit", daemon=True).start()
        time.sleep(GRACE_S)
        os._exit(HANGUP_EXIT)  # the clean exit is stuck (e.g. on Textual's output queue); nothing left to show

    thread = threading.Thread(target=watch, name="terminal-watch", daemon=True)
    thread.start()
    return thread
