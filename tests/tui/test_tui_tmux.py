"""`llava-local chat --model BUNDLE IMAGE` in a real terminal (tmux): type a question, read the answer off the pane.

tmux runs on a private socket (`-L`), so the test never touches a user's tmux server; the server is killed at the
end. The CLI runs as `python -m llava_local.cli` from the repository root (installed: entry points name its commands).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tui.store import Store

ROOT = Path(__file__).parents[2]


class Tmux:
    def __init__(self, socket: str) -> None:
        self.socket = socket

    def __call__(self, *args: str) -> str:
        out = subprocess.run(["tmux", "-L", self.socket, "-f", "/dev/null", *args], capture_output=True, text=True,
                             timeout=30)
        if out.returncode:
            raise AssertionError(f"tmux {' '.join(args)} failed: {out.stderr.strip()}")
        return out.stdout

    def pane(self) -> str:
        return self("capture-pane", "-p", "-t", "chat")

    def wait_for(self, predicate, timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.pane()
            if predicate(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; the pane shows:\n{text}")
            time.sleep(0.2)


@pytest.fixture
def tmux(tmp_path: Path):
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed: `apt-get install -y tmux` (make sysdeps does it)")
    t = Tmux(f"llava-test-{os.getpid()}-{tmp_path.name}")
    yield t
    subprocess.run(["tmux", "-L", t.socket, "kill-server"], capture_output=True, timeout=30)


def test_chat_in_tmux(tmux: Tmux, bundle: Path, red_png: Path, tmp_path: Path):
    home = tmp_path / "home"
    cmd = (f"cd {ROOT} && LLAVA_LOCAL_HOME={home} TERM=xterm-256color {sys.executable} -m llava_local.cli chat "
           f"--model {bundle} --temperature 0 --max-tokens 16 '{red_png}'; sleep 30")
    tmux("new-session", "-d", "-s", "chat", "-x", "110", "-y", "32", cmd)
    tmux("resize-window", "-t", "chat", "-x", "110", "-y", "32")
    tmux.wait_for(lambda s: " ready │" in s and "red square.png" in s, 60, "the app to load the model")
    tmux("send-keys", "-t", "chat", "-l", "What shape is this?")
    tmux("send-keys", "-t", "chat", "Enter")
    pane = tmux.wait_for(lambda s: "tok/s ·" in s, 60, "the answer")
    assert "[?" not in pane  # no terminal query reply leaked into the prompt
    assert "You" in pane and "What shape is this?" in pane and "Assistant" in pane
    store = Store(home / "data")
    (row,) = store.sessions()
    user, answer = store.messages(row.id)
    store.close()
    assert user.text == "What shape is this?" and user.images[0].name == "red square.png"
    words = [w for w in answer.text.split() if w.isascii() and w.isprintable() and len(w) > 2]
    assert answer.text.strip() and all(w in pane.replace("\n", "") for w in words[:3]), (answer.text, pane)
    tmux("send-keys", "-t", "chat", "C-q")
    tmux.wait_for(lambda s: " ready │" not in s, 30, "the app to quit")
