"""`llava-local chat` in a real pseudo-terminal that goes away: the app must exit, not spin headless.

A terminal emulator (or tmux, or an ssh connection) that dies closes the pty's master side; the kernel then
hangs up the terminal: reads return EOF, writes fail, and the session leader gets SIGHUP. A process that ignores
SIGHUP (started under `nohup`, or by a launcher that sets it to SIG_IGN) sees only the EOF, and Textual's input
thread reads that EOF in a tight loop forever. The app must notice either way and quit, keeping every saved turn.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tui.store import Store

ROOT = Path(__file__).parents[2]


def _spawn_in_pty(argv: list[str], env: dict[str, str], ignore_sighup: bool) -> tuple[subprocess.Popen, int]:
    """Start argv as a session leader whose controlling terminal is a fresh pty; return (process, master fd)."""
    master, slave = os.openpty()
    os.set_inheritable(slave, True)

    def child_setup() -> None:
        os.setsid()
        import fcntl
        import termios

        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)  # make the pty the controlling terminal
        import struct

        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
        signal.signal(signal.SIGHUP, signal.SIG_IGN if ignore_sighup else signal.SIG_DFL)

    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=ROOT,
                            preexec_fn=child_setup, close_fds=True, pass_fds=(slave,))
    os.close(slave)
    return proc, master


def _read_until(master: int, needle: bytes, timeout: float) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out waiting for {needle!r}; the terminal got {seen[-400:]!r}")
        ready, _, _ = select.select([master], [], [], min(left, 0.5))
        if ready:
            try:
                seen += os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
    return seen


@pytest.mark.parametrize("ignore_sighup", [False, True], ids=["sighup", "sighup-ignored"])
def test_chat_exits_when_its_terminal_hangs_up(bundle: Path, red_png: Path, tmp_path: Path, ignore_sighup: bool):
    env = {**os.environ, "LLAVA_LOCAL_HOME": str(tmp_path / "home"), "TERM": "xterm-256color"}
    argv = [sys.executable, "-m", "llava_local.cli", "chat", "--model", str(bundle), "--max-tokens", "8",
            str(red_png)]
    proc, master = _spawn_in_pty(argv, env, ignore_sighup)
    try:
        _read_until(master, b"ready", 60)  # the status bar once the model is loaded
        os.write(master, b"What shape is this?")
        time.sleep(0.5)
        os.write(master, b"\r")
        _read_until(master, b"tok/s", 60)  # the answer's stats line: the turn is finished and saved
        os.close(master)  # the terminal goes away
        master = -1
        try:
            code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            cpu = _cpu_seconds(proc.pid)
            raise AssertionError(f"chat still running 20 s after its terminal hung up ({cpu:.1f} CPU-s used)")
        # SIGHUP's default action ends the process with the signal; a handled hangup exits on its own.
        assert code in (-signal.SIGHUP, 128 + signal.SIGHUP), code
        store = Store(tmp_path / "home" / "data")  # the finished turn survived
        (row,) = store.sessions()
        user, answer = store.messages(row.id)
        store.close()
        assert user.text == "What shape is this?" and answer.text.strip()
    finally:
        if master >= 0:
            os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
