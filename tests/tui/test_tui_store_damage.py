"""A damaged sessions database: the store opens anyway, keeps the damaged file, carries over what still reads,
and never raises anything but `StoreError` from listing or opening sessions (the properties, for any bytes, any
damage and any row, are in tests/fuzz/test_props_sessions.py).

The damage is real: SQLite pages overwritten on disk, a file that is not a database, rows written with raw SQL
that the store itself would never write (settings that are not JSON, numbers for titles, path-like image refs).
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from tuihelpers import filled_store

from tui.store import Message, Store, StoreError

PAGE = 4096  # SQLite's default page size


def _read_everything(store: Store) -> list[tuple[str, list[str]]]:
    """What the app does on Ctrl+S and `--session N`: list, then open each session."""
    out = []
    for row in store.sessions():
        assert isinstance(row.title, str) and isinstance(row.settings, dict) and isinstance(row.updated, float)
        msgs = store.messages(row.id)
        assert all(m.role in ("user", "assistant") and isinstance(m.text, str) for m in msgs)
        out.append((row.title, [m.text for m in msgs]))
    return out


def test_garbage_file_is_moved_aside_and_a_new_database_works(tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    junk = b"this is not a database\n" * 300
    (data / "sessions.db").write_bytes(junk)
    s = Store(data)
    assert s.notice and "damaged" in s.notice and s.damaged_copy.name in s.notice
    assert s.damaged_copy.read_bytes() == junk  # kept byte for byte, never overwritten
    assert s.sessions() == []
    sid = s.create_session("new", "m", {}, None)  # and the app keeps working
    s.save_turn(sid, Message("user", "q"), Message("assistant", "a"))
    assert [m.text for m in s.messages(sid)] == ["q", "a"]
    s.close()


def test_corrupt_pages_keep_the_file_and_carry_over_readable_sessions(tmp_path: Path):
    data = tmp_path / "data"
    db = filled_store(data, n_sessions=40, filler=300)  # several pages of messages
    original = db.read_bytes()
    assert len(original) > 8 * PAGE
    damaged = bytearray(original)
    start = len(damaged) - 3 * PAGE  # the last pages: messages of some sessions, not the schema
    damaged[start:start + 2 * PAGE] = b"\xa5" * (2 * PAGE)
    db.write_bytes(bytes(damaged))
    s = Store(data)
    assert s.notice is not None and s.damaged_copy is not None
    assert s.damaged_copy.read_bytes() == bytes(damaged)  # nothing lost: the damaged file is kept as it was
    got = _read_everything(s)
    assert 0 < len(got) <= 40  # what still reads was copied over...
    for title, texts in got:  # ...and is complete: every copied session has its four messages
        i = title.split()[1]
        assert texts == [f"q{i}.0 " + "x" * 300, f"a{i}.0", f"q{i}.1 " + "x" * 300, f"a{i}.1"]
    assert f"{len(got)} of" in s.notice
    s.close()
    again = Store(data)  # the new database is healthy: no second repair
    assert again.notice is None and len(again.sessions()) == len(got)
    again.close()


def test_rows_the_store_never_writes_read_back_with_defaults(tmp_path: Path, red_png: Path):
    data = tmp_path / "data"
    s = Store(data)
    ref = s.import_image(red_png)
    sid = s.create_session("ok", "m", {"temperature": 0.5}, None)
    s.save_turn(sid, Message("user", "q", (ref,)), Message("assistant", "a", (), "eos", {"tps": 2.0}))
    db = s._db
    db.execute("UPDATE sessions SET settings = 'not json{', title = 42, updated = 'yesterday' WHERE id = ?", (sid,))
    db.execute("UPDATE messages SET stats = '[1, 2]' WHERE session_id = ? AND role = 'assistant'", (sid,))
    (mid,) = db.execute("SELECT id FROM messages WHERE session_id = ? AND role = 'user'", (sid,)).fetchone()
    db.execute("INSERT INTO message_images VALUES (?, 1, '../../../etc/passwd', '', 'evil')", (mid,))
    s2 = db.execute("INSERT INTO sessions (title, model, settings, system, created, updated) "
                    "VALUES (x'00ff', 7, '\"a string\"', 3, 0, 0)").lastrowid
    (row,) = [r for r in s.sessions() if r.id == sid]
    assert (row.title, row.settings, row.updated) == ("42", {}, 0.0)
    user, answer = s.messages(sid)
    assert user.images == (ref,) and answer.stats == {}  # the path-like reference is dropped
    (other,) = [r for r in s.sessions() if r.id == s2]
    assert other.settings == {} and isinstance(other.title, str) and other.system == "3"
    s.close()


def test_a_failure_after_opening_is_a_store_error(tmp_path: Path):
    s = Store(tmp_path / "data")
    s._db.close()  # stands in for a database that fails mid-run: every call must fail the same clean way
    with pytest.raises(StoreError, match="sessions database"):
        s.sessions()
    with pytest.raises(StoreError):
        s.save_turn(1, Message("user", "q"), Message("assistant", "a"))


def test_locked_database_is_not_mistaken_for_damage(tmp_path: Path):
    """Only corruption moves a file aside: a database another process holds locked is left exactly where it is."""
    data = tmp_path / "data"
    filled_store(data, 1)
    holder = sqlite3.connect(data / "sessions.db", isolation_level=None)
    holder.execute("PRAGMA journal_mode=DELETE")  # a rollback journal, so an exclusive lock blocks readers
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(sqlite3.OperationalError):
            Store(data)
        assert not list(data.glob("sessions.damaged-*"))
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_moved_aside_wal_keeps_its_committed_turns(tmp_path: Path):
    """The WAL holds committed turns until a checkpoint: it moves with the damaged file, and is read in salvage."""
    data = tmp_path / "data"
    filled_store(data, 40, filler=300)
    s = Store(data)  # a turn committed to the WAL only (the writer is still open: no checkpoint)
    sid = s.create_session("late", "m", {}, None)
    s.save_turn(sid, Message("user", "late q"), Message("assistant", "late a"))
    keep = tmp_path / "copy"
    keep.mkdir()
    for p in data.glob("sessions.db*"):
        shutil.copy(p, keep / p.name)
    s.close()
    db = keep / "sessions.db"
    wal = (keep / "sessions.db-wal").read_bytes()
    assert len(wal) > 0
    raw = bytearray(db.read_bytes())
    raw[4 * PAGE:6 * PAGE] = b"\xa5" * (2 * PAGE)  # early sessions' pages, which the WAL does not hold
    db.write_bytes(bytes(raw))
    s = Store(keep)
    assert s.notice is not None
    assert s.damaged_copy.with_name(s.damaged_copy.name + "-wal").read_bytes() == wal
    assert not (keep / "sessions.db-wal").exists() or (keep / "sessions.db-wal").read_bytes() != wal
    s.close()
