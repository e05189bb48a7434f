"""Property: whatever bytes sit in the sessions database file, whatever damage a real database takes and whatever
values its rows hold, `Store` opens, and listing and opening sessions never raise anything but the store's own
one-line `StoreError`; a damaged file is kept byte for byte, and no image path leaves the store's folder."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from tui.store import Store, StoreError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tui"))  # tuihelpers

from tuihelpers import filled_store  # noqa: E402

PAGE = 4096  # SQLite's default page size


def read_everything(store: Store) -> None:
    """What the app does on Ctrl+S and `--session N`: list, then open each session; the promised types hold."""
    for row in store.sessions():
        assert isinstance(row.title, str) and isinstance(row.settings, dict) and isinstance(row.updated, float)
        msgs = store.messages(row.id)
        assert all(m.role in ("user", "assistant") and isinstance(m.text, str) for m in msgs)

def _check_never_raises(data: Path) -> None:
    try:
        s = Store(data)
    except sqlite3.OperationalError as e:  # not damage (permissions, locks): the launcher's one-line error
        raise AssertionError(f"damage reported as {e!r}") from None
    try:
        read_everything(s)
    except StoreError:
        pass  # a clean, one-line failure the app shows as a notification
    finally:
        s.close()


@given(blob=st.binary(max_size=3 * PAGE))
def test_any_bytes_as_the_database(tmp_path_factory, blob: bytes):
    data = tmp_path_factory.mktemp("data")
    (data / "sessions.db").write_bytes(blob)
    _check_never_raises(data)
    damaged = list(data.glob("sessions.damaged-*.db"))
    if damaged:
        assert damaged[0].read_bytes() == blob


_HEALTHY: list[bytes] = []


def _healthy_db(tmp_path_factory) -> bytes:
    """A real database of 12 sessions, built once (a module-level cache: hypothesis prints fixture values)."""
    if not _HEALTHY:
        _HEALTHY.append(filled_store(tmp_path_factory.mktemp("healthy"), n_sessions=12, filler=200).read_bytes())
    return _HEALTHY[0]


@given(hits=st.lists(st.tuples(st.integers(min_value=0), st.binary(min_size=1, max_size=64)), min_size=1,
                     max_size=8))
def test_any_damage_to_a_real_database(tmp_path_factory, hits):
    data = tmp_path_factory.mktemp("data")
    raw = bytearray(_healthy_db(tmp_path_factory))
    for offset, patch in hits:
        at = offset % len(raw)
        raw[at:at + len(patch)] = patch[: len(raw) - at]
    (data / "sessions.db").write_bytes(bytes(raw))
    _check_never_raises(data)


_VALUES = st.one_of(st.none(), st.integers(min_value=-2**63, max_value=2**63 - 1), st.floats(), st.text(max_size=40),
                    st.binary(max_size=40), st.sampled_from(['{"temperature": "hot"}', "{", "[]", '{"top_k": 1.5}']))


@given(session=st.tuples(*[_VALUES] * 5), message=st.tuples(st.sampled_from(["user", "assistant"]), *[_VALUES] * 3),
       image=st.tuples(*[_VALUES] * 3))
def test_any_row_values(tmp_path_factory, session, message, image):
    data = tmp_path_factory.mktemp("data")
    s = Store(data)
    db = s._db
    title, model, settings_, system, updated = session
    try:
        sid = db.execute("INSERT INTO sessions (title, model, settings, system, created, updated) "
                         "VALUES (?, ?, ?, ?, 0, ?)", (title, model, settings_, system, updated)).lastrowid
        role, text, stop, stats = message
        mid = db.execute("INSERT INTO messages (session_id, position, role, text, stop_reason, stats) "
                         "VALUES (?, 0, ?, ?, ?, ?)", (sid, role, text, stop, stats)).lastrowid
        db.execute("INSERT INTO message_images VALUES (?, 0, ?, ?, ?)", (mid, *image))
    except sqlite3.IntegrityError:
        pass  # NOT NULL: SQLite itself refuses such a row, so it can never be on disk
    s.close()
    s = Store(data)
    try:
        for row in s.sessions():
            for m in s.messages(row.id):
                for ref in m.images:
                    assert s.image_path(ref).parent == s.images_dir  # never a path outside the store
    finally:
        s.close()
