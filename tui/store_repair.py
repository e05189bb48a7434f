"""Damage handling for the sessions database (`tui.store`): detect, move aside, salvage, read defensively.

Contract (stdlib only): `check(path)` raises `Damaged` if the file is not a healthy sessions database, reading it
on a read-only connection (a read-write one would checkpoint the WAL into the damaged file on close) and
re-raising environmental failures (locked, read-only, missing) as they are: those never move a file aside.
`move_aside(db_path) -> Path` renames the file and its WAL to `sessions.damaged-<time>.db[-wal]` (never deletes
data). `salvage(damaged, work_dir, copy)` opens a scratch copy of the damaged file and calls `copy(src, row)` for
each session row that still reads; returns (copied, seen). The value readers (`text`, `json_object`, `number`,
`decode`) turn whatever SQLite hands back from a damaged or hand-edited row into the type the store promises.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The columns every table must have (what the store's queries use): a file with other tables is not ours.
COLUMNS = {
    "sessions": {"id", "title", "model", "settings", "system", "created", "updated"},
    "messages": {"id", "session_id", "position", "role", "text", "stop_reason", "stats"},
    "message_images": {"message_id", "position", "sha256", "ext", "name"},
}
# SQLite result codes (the low byte of extended codes) that say "not now, not here" rather than "this file is
# damaged": PERM, BUSY, LOCKED, NOMEM, READONLY, IOERR, FULL, CANTOPEN. They never make us move the user's
# database aside; every other failure while checking the file (CORRUPT, NOTADB, "unsupported file format") does.
ENVIRONMENT_CODES = {3, 5, 6, 7, 8, 10, 13, 14}
SESSION_COLUMNS = "id, title, model, settings, system, created, updated"


class Damaged(Exception):
    """The file at open is not a healthy sessions database; `str()` says why in a few words."""


def is_damage(e: sqlite3.Error) -> bool:
    code = getattr(e, "sqlite_errorcode", None)
    return code is not None and (code & 0xFF) not in ENVIRONMENT_CODES


def decode(raw: bytes) -> str:
    """TEXT values as str even when a damaged page holds bytes that are not UTF-8 (the default raises)."""
    return raw.decode("utf-8", "replace")


def text(value: Any, default: str = "") -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return default if value is None else str(value)


def json_object(value: Any) -> dict[str, Any]:
    """A stored JSON object, or {} for anything else (not JSON, JSON but not an object, NULL)."""
    try:
        data = json.loads(value) if isinstance(value, (str, bytes)) else None
    except (ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def check(path: Path) -> None:
    """Damaged if the file at `path` exists and is not a healthy sessions database (read-only look)."""
    if not path.exists():
        return
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as e:
        if is_damage(e):
            raise Damaged(str(e)) from None
        raise
    db.text_factory = decode
    try:
        problems = [r[0] for r in db.execute("PRAGMA quick_check(3)").fetchall()]
        if problems != ["ok"]:
            raise Damaged(text(problems[0], "quick_check failed").splitlines()[0])
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables - set(COLUMNS):
            raise Damaged(f"unexpected tables {', '.join(sorted(map(str, tables - set(COLUMNS))))}")
        for table in tables:
            have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
            if not COLUMNS[table] <= have:
                raise Damaged(f"table {table} lacks {', '.join(sorted(COLUMNS[table] - have))}")
    except sqlite3.Error as e:
        if is_damage(e):
            raise Damaged(str(e)) from None
        raise
    except UnicodeDecodeError:  # SQLite's error message quotes a damaged schema's bytes
        raise Damaged("the schema is not readable text") from None
    finally:
        db.close()


def move_aside(db_path: Path) -> Path:
    """Rename the damaged database (and its WAL, which holds committed turns too) out of the way; keep both."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = db_path.with_name(f"sessions.damaged-{stamp}.db")
    n = 1
    while dest.exists():
        n += 1
        dest = db_path.with_name(f"sessions.damaged-{stamp}-{n}.db")
    wal, shm = db_path.with_name(db_path.name + "-wal"), db_path.with_name(db_path.name + "-shm")
    if wal.exists():
        wal.rename(dest.with_name(dest.name + "-wal"))
    shm.unlink(missing_ok=True)  # the shared-memory index is rebuilt from the WAL; it holds no data
    db_path.rename(dest)
    return dest


def read_rows(db: sqlite3.Connection, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows one at a time until the first unreadable page: what comes before it is kept."""
    out = []
    try:
        for row in db.execute(sql, params):
            out.append(row)
    except (sqlite3.DatabaseError, UnicodeDecodeError):
        if not out:
            raise
    return out


def salvage(damaged: Path, work_dir: Path, copy: Callable[[sqlite3.Connection, tuple[Any, ...]], None],
            ) -> tuple[int, int]:
    """Call `copy(src, row)` for each session row (SESSION_COLUMNS) that still reads; returns (copied, seen).

    `copy` raises sqlite3.Error (or ValueError) when that session cannot be read or written; it is then skipped.
    Reads a scratch copy in `work_dir`, so SQLite's recovery on open (a WAL replay) never writes to the kept file."""
    saved = total = 0
    with tempfile.TemporaryDirectory(dir=work_dir, prefix=".salvage-") as tmp:
        scratch = Path(tmp) / "s.db"
        shutil.copyfile(damaged, scratch)
        wal = damaged.with_name(damaged.name + "-wal")
        if wal.exists():
            shutil.copyfile(wal, scratch.with_name("s.db-wal"))
        try:
            src = sqlite3.connect(scratch, isolation_level=None)
        except sqlite3.Error:
            return 0, 0
        src.text_factory = decode
        try:
            try:
                rows = read_rows(src, f"SELECT {SESSION_COLUMNS} FROM sessions")
            except (sqlite3.Error, UnicodeDecodeError):
                rows = []
            for row in rows:
                total += 1
                try:
                    copy(src, row)
                except (sqlite3.Error, UnicodeDecodeError, ValueError, OverflowError):
                    continue  # this session's pages are gone, or its values do not fit
                saved += 1
        finally:
            src.close()
    return saved, total
