"""The sessions store: turns, images by content hash, regenerate, delete, and kill -9 safety."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from tui.store import Message, Store


def test_turns_images_and_sessions(tmp_path: Path, red_png: Path):
    s = Store(tmp_path / "data")
    sid = s.create_session("cats", "tiny", {"temperature": 0.2}, None)
    ref = s.import_image(red_png)
    assert s.import_image(red_png) == ref  # same bytes, same file
    s.save_turn(sid, Message("user", "what?", (ref,)), Message("assistant", "a square", (), "eos", {"tps": 3.0}))
    s.save_turn(sid, Message("user", "more?"), Message("assistant", "no", (), "cancelled"))
    red_png.unlink()  # the session survives the original file moving away
    msgs = s.messages(sid)
    assert [(m.role, m.text) for m in msgs] == [("user", "what?"), ("assistant", "a square"), ("user", "more?"),
                                               ("assistant", "no")]
    assert msgs[0].images == (ref,) and s.image_path(ref).is_file() and msgs[1].stats == {"tps": 3.0}
    s.replace_last_answer(sid, Message("assistant", "yes", (), "eos"))
    assert [m.text for m in s.messages(sid)] == ["what?", "a square", "more?", "yes"]
    s.update_session(sid, title="dogs", settings={"temperature": 0.5}, system="terse")
    row = s.sessions()[0]
    assert (row.title, row.settings, row.system, row.n_messages) == ("dogs", {"temperature": 0.5}, "terse", 4)
    s.delete_session(sid)
    assert s.sessions() == [] and s.messages(sid) == []
    assert s._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    s.close()


def test_failed_transaction_leaves_nothing(tmp_path: Path):
    s = Store(tmp_path / "data")
    sid = s.create_session("t", "m", {}, None)
    bad = Message("robot", "x")  # violates the role CHECK: the whole turn must roll back
    try:
        s.save_turn(sid, Message("user", "q"), bad)
    except Exception:
        pass
    assert s.messages(sid) == []
    s.close()


def test_finished_turns_survive_kill_9(tmp_path: Path):
    """A process saves turns in a loop and is SIGKILLed mid-way: every committed turn is intact and complete."""
    data = tmp_path / "data"
    code = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).parents[2])!r})
        from tui.store import Message, Store
        s = Store({str(data)!r})
        sid = s.create_session("crash", "m", {{}}, None)
        for i in range(100000):
            s.save_turn(sid, Message("user", f"q{{i}}"), Message("assistant", f"a{{i}}", (), "eos"))
            if i == 20:
                print("ready", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    s = Store(data)
    (row,) = s.sessions()
    msgs = s.messages(row.id)
    assert len(msgs) >= 42 and len(msgs) % 2 == 0  # whole turns only
    for i in range(0, len(msgs), 2):
        assert (msgs[i].text, msgs[i + 1].text) == (f"q{i // 2}", f"a{i // 2}")
    s.close()
