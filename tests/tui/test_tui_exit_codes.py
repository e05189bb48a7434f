"""`llava-local chat` (the terminal app) in a real pseudo-terminal: exit codes for a quit, SIGINT and SIGTERM, and a
damaged sessions database met with `--session 1` and Ctrl+S: no traceback, the app keeps working."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from test_tui_hangup import _read_until, _spawn_in_pty

from tui.store import Message, Store


def _chat(bundle: Path, home: Path, *extra: str) -> tuple[subprocess.Popen, int]:
    env = {**os.environ, "LLAVA_LOCAL_HOME": str(home), "TERM": "xterm-256color", "LLAVA_LOCAL_THREADS": "1"}
    argv = [sys.executable, "-m", "llava_local.cli", "chat", "--model", str(bundle), "--max-tokens", "4", *extra]
    return _spawn_in_pty(argv, env, ignore_sighup=False)


def _finish(proc: subprocess.Popen, master: int) -> tuple[int, bytes]:
    """Wait for the exit while draining the terminal (a full pty would block the app's last writes)."""
    seen = b""
    try:
        while proc.poll() is None:
            try:
                seen += _read_until(master, b"\x00never", 0.5)
            except AssertionError as e:  # the timeout: nothing new, keep waiting
                seen += str(e).encode()
                if proc.poll() is None:
                    try:
                        proc.wait(timeout=0.5)
                    except subprocess.TimeoutExpired:
                        pass
        return proc.returncode, seen
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("how,code", [("ctrl+q", 0), ("SIGINT", 130), ("SIGTERM", 143)])
def test_exit_codes(_own_bundle, tmp_path, how, code):
    proc, master = _chat(_own_bundle, tmp_path / "home")
    try:
        seen = _read_until(master, b"ready", 60)
        # This pty answers no terminal queries: textual-image's fallback must not print a traceback either.
        assert b"Traceback" not in seen, seen[:2000]
        if how == "ctrl+q":
            os.write(master, b"\x11")
        else:
            proc.send_signal(getattr(signal, how))
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert proc.returncode == code


def _bad_rows(home: Path) -> None:
    s = Store(home / "data")
    sid = s.create_session("cats", "tiny", {"temperature": 0.3}, None)
    s.save_turn(sid, Message("user", "what is it?"), Message("assistant", "a cat", (), "eos", {"tps": 1.0}))
    s.close()
    db = sqlite3.connect(home / "data" / "sessions.db")
    db.execute("UPDATE sessions SET settings = '{not json' WHERE id = ?", (sid,))
    db.commit()
    db.close()


def _corrupt_pages(home: Path) -> None:
    s = Store(home / "data")
    for i in range(40):
        sid = s.create_session(f"chat {i}", "tiny", {}, None)
        s.save_turn(sid, Message("user", f"q{i} " + "x" * 300), Message("assistant", f"a{i}"))
    s.close()
    db = home / "data" / "sessions.db"
    raw = bytearray(db.read_bytes())
    raw[-3 * 4096:-4096] = b"\xa5" * 8192
    db.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", [_bad_rows, _corrupt_pages], ids=["settings-not-json", "corrupt-pages"])
def test_damaged_sessions_database(_own_bundle, tmp_path, damage):
    home = tmp_path / "home"
    damage(home)
    proc, master = _chat(_own_bundle, home, "--session", "1")
    seen = _read_until(master, b"ready", 60)
    os.write(master, b"\x13")  # Ctrl+S: the sessions screen
    seen += _read_until(master, b"Enter resume", 30)
    os.write(master, b"\x1b")  # Esc closes it
    os.write(master, b"\x11")  # Ctrl+Q
    code, rest = _finish(proc, master)
    seen += rest
    app_output = seen[seen.find(b"\x1b[?1049h"):]  # from the app's screen on (textual-image may log before it)
    assert b"Traceback" not in app_output, app_output[-3000:]
    assert code == 0
    if damage is _corrupt_pages:
        (kept,) = (home / "data").glob("sessions.damaged-*.db")
        assert kept.stat().st_size > 0
