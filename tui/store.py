"""Sessions on disk: one SQLite database plus a content-addressed image folder.

Contract: `Store(data_dir)` opens (creating if needed) `data_dir/sessions.db` in WAL mode and
`data_dir/images/`. A chat is persisted one *finished turn* at a time: `save_turn` writes the user message,
its images and the answer in one transaction, so a `kill -9` at any moment leaves either the whole turn or
none of it. Images are copied into `images/<sha256>.<ext>` *before* the transaction (write to a temp file,
fsync, rename), so a stored message never points at a missing file and a session survives the original
file moving. Stdlib only (sqlite3) plus `llava_local.errors`; no Textual imports, so the store is testable on its own.

A damaged database never stops the app and is never overwritten or deleted (`tui.store_repair`): a damaged file
(corrupt pages, not a database, foreign tables) is renamed to `sessions.damaged-<time>.db` with its `-wal`, a fresh
`sessions.db` is created, every session still readable in the damaged copy is copied into it under its old id, and
`notice` says so in one line for the app to show. Rows that read but hold nonsense (settings that are not a JSON
object, a title that is a number, an image reference that is not a sha256) come back with defaults or are skipped.
A failure after opening (the disk goes bad mid-chat) raises `StoreError`, a `LlavaLocalError` the app turns into a
notification.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from llava_local.errors import LlavaLocalError
from llava_local.templates import Turn

from . import store_repair as repair
from .store_repair import Damaged, decode, json_object, number, text

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    model TEXT NOT NULL,
    settings TEXT NOT NULL,          -- GenerationConfig.to_dict() as JSON
    system TEXT,                     -- system prompt override, NULL for the template's
    created REAL NOT NULL,           -- unix seconds
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,       -- 0, 1, 2 ... in conversation order (user, assistant, user, ...)
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    text TEXT NOT NULL,
    stop_reason TEXT,                -- assistant only: eos | stop | length | cancelled
    stats TEXT,                      -- assistant only: JSON {ttft, tps, n_generated}
    UNIQUE (session_id, position)
);
CREATE TABLE IF NOT EXISTS message_images (
    message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    ext TEXT NOT NULL,
    name TEXT NOT NULL,              -- the file's original name, for display only
    PRIMARY KEY (message_id, position)
);
"""


_SHA256 = re.compile(r"[0-9a-f]{64}")
_EXT = re.compile(r"\.[^/\\\x00]{1,32}")  # what Path.suffix can give, never a separator


class StoreError(LlavaLocalError):
    """The sessions database failed after it was opened (disk error, damage appearing mid-run)."""


_T = TypeVar("_T")


def _guarded(fn: Callable[..., _T]) -> Callable[..., _T]:
    """sqlite3 errors from a store method become one-line StoreErrors."""

    @functools.wraps(fn)
    def wrapper(self: Store, *args: Any, **kwargs: Any) -> _T:
        try:
            return fn(self, *args, **kwargs)
        except (sqlite3.Error, UnicodeDecodeError) as e:
            raise StoreError(f"the sessions database {self.db_path} failed: {e}") from None
    return wrapper


@dataclass(frozen=True)
class ImageRef:
    """An image copied into the store: `images/<sha256><ext>`; `name` is the original file name."""

    sha256: str
    ext: str
    name: str

    def path(self, images_dir: Path) -> Path:
        return images_dir / f"{self.sha256}{self.ext}"


@dataclass(frozen=True)
class Message:
    """One stored message. `images` only on user messages; `stop_reason`/`stats` only on answers."""

    role: str
    text: str
    images: tuple[ImageRef, ...] = ()
    stop_reason: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SessionRow:
    """A row of the sessions list."""

    id: int
    title: str
    model: str
    settings: dict[str, Any]
    system: str | None
    updated: float
    n_messages: int


def _fsync_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + f".tmp{os.getpid()}")
    with open(src, "rb") as fi, open(tmp, "wb") as fo:
        shutil.copyfileobj(fi, fo)
        fo.flush()
        os.fsync(fo.fileno())
    os.replace(tmp, dst)


class Store:
    """The sessions database. One instance per app; used from the UI thread only."""

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir)
        self.images_dir = self.data_dir / "images"
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.data_dir / "sessions.db"
        self.notice: str | None = None  # one line for the user when the database had to be repaired
        self.damaged_copy: Path | None = None
        try:
            self._db = self._open(self.db_path)
        except Damaged as e:
            self.damaged_copy = repair.move_aside(self.db_path)
            self._db = self._open(self.db_path)
            saved, total = repair.salvage(self.damaged_copy, self.data_dir, self._copy_session)
            self.notice = (f"the sessions database was damaged ({e}); it is kept as {self.damaged_copy.name} and "
                           f"{saved} of {total} sessions were copied into a new one")

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        """Check the file, then connect and create the schema; Damaged if it is not a healthy sessions database."""
        repair.check(path)
        # isolation_level=None: we open transactions ourselves (BEGIN IMMEDIATE … COMMIT), one per turn.
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.text_factory = decode
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk when save_turn returns, so a finished turn survives power loss too.
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            db.close()
            raise
        return db

    def _copy_session(self, src: sqlite3.Connection, row: tuple[Any, ...]) -> None:
        """Salvage: one session (a SESSION_COLUMNS row) and its messages from a damaged database, in one transaction."""
        sid, title, model, settings, system, created, updated = row
        msgs = list(_read_messages(src, sid))
        with self._transaction():
            # The same id when it is a free integer, so `--session 3` still finds session 3.
            keep_id = sid if isinstance(sid, int) and not self._db.execute(
                "SELECT 1 FROM sessions WHERE id = ?", (sid,)).fetchone() else None
            cur = self._db.execute(
                "INSERT INTO sessions (id, title, model, settings, system, created, updated) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (keep_id, text(title, "untitled"), text(model), json.dumps(json_object(settings)),
                 None if system is None else text(system), number(created), number(updated)))
            for pos, m in enumerate(msgs):
                self._insert(int(cur.lastrowid), pos, m)

    def close(self) -> None:
        self._db.close()

    # -- images ---------------------------------------------------------------------------------
    def import_image(self, path: str | Path) -> ImageRef:
        """Copy an image's bytes into the store (once per content) and return its reference."""
        src = Path(path)
        digest = hashlib.sha256(src.read_bytes()).hexdigest()
        ref = ImageRef(digest, src.suffix.lower() or ".img", src.name)
        dst = ref.path(self.images_dir)
        if not dst.exists():
            _fsync_copy(src, dst)
        return ref

    def image_path(self, ref: ImageRef) -> Path:
        return ref.path(self.images_dir)

    # -- sessions -------------------------------------------------------------------------------
    @_guarded
    def create_session(self, title: str, model: str, settings: dict[str, Any], system: str | None) -> int:
        now = time.time()
        cur = self._db.execute(
            "INSERT INTO sessions (title, model, settings, system, created, updated) VALUES (?, ?, ?, ?, ?, ?)",
            (title, model, json.dumps(settings), system, now, now),
        )
        return int(cur.lastrowid)

    @_guarded
    def update_session(self, session_id: int, **fields: Any) -> None:
        """Change `title`, `model`, `settings` (dict) or `system` of a session."""
        allowed = {"title", "model", "settings", "system"}
        unknown = set(fields) - allowed
        assert not unknown, f"unknown session fields {unknown}"
        if "settings" in fields:
            fields["settings"] = json.dumps(fields["settings"])
        sets = ", ".join(f"{k} = ?" for k in fields)
        self._db.execute(f"UPDATE sessions SET {sets}, updated = ? WHERE id = ?",
                         (*fields.values(), time.time(), session_id))

    @_guarded
    def delete_session(self, session_id: int) -> None:
        """Delete a session and its messages. Image files stay: other sessions may share them."""
        self._db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))

    @_guarded
    def sessions(self) -> list[SessionRow]:
        """All sessions, most recently updated first."""
        rows = self._db.execute(
            "SELECT s.id, s.title, s.model, s.settings, s.system, s.updated, "
            "(SELECT COUNT(*) FROM messages m WHERE m.session_id = s.id) "
            "FROM sessions s ORDER BY s.updated DESC, s.id DESC"
        ).fetchall()
        # SQLite keeps whatever type was written: a row edited by hand comes back with defaults, not a crash.
        return [SessionRow(r[0], text(r[1], "untitled"), text(r[2]), json_object(r[3]),
                           None if r[4] is None else text(r[4]), number(r[5]), int(r[6]))
                for r in rows if isinstance(r[0], int)]

    @_guarded
    def session(self, session_id: int) -> SessionRow | None:
        return next((s for s in self.sessions() if s.id == session_id), None)

    @_guarded
    def messages(self, session_id: int) -> list[Message]:
        """A session's messages in conversation order, with their images (malformed rows skipped)."""
        return list(_read_messages(self._db, session_id))

    # -- turns ----------------------------------------------------------------------------------
    @_guarded
    def save_turn(self, session_id: int, user: Message, answer: Message) -> None:
        """Append a finished turn (question + answer) in one transaction."""
        with self._transaction():
            (n,) = self._db.execute("SELECT COUNT(*) FROM messages WHERE session_id = ?", (session_id,)).fetchone()
            self._insert(session_id, n, user)
            self._insert(session_id, n + 1, answer)
            self._db.execute("UPDATE sessions SET updated = ? WHERE id = ?", (time.time(), session_id))

    @_guarded
    def replace_last_answer(self, session_id: int, answer: Message) -> None:
        """Regenerate: swap the last assistant message for a new one, in one transaction."""
        with self._transaction():
            row = self._db.execute(
                "SELECT id, position FROM messages WHERE session_id = ? ORDER BY position DESC LIMIT 1", (session_id,)
            ).fetchone()
            if row is not None:
                self._db.execute("DELETE FROM messages WHERE id = ?", (row[0],))
            self._insert(session_id, row[1] if row else 0, answer)
            self._db.execute("UPDATE sessions SET updated = ? WHERE id = ?", (time.time(), session_id))

    @_guarded
    def clear_messages(self, session_id: int) -> None:
        self._db.execute("DELETE FROM messages WHERE session_id = ?", (session_id,))

    def _insert(self, session_id: int, position: int, m: Message) -> None:
        cur = self._db.execute(
            "INSERT INTO messages (session_id, position, role, text, stop_reason, stats) VALUES (?, ?, ?, ?, ?, ?)",
            (session_id, position, m.role, m.text, m.stop_reason, json.dumps(m.stats) if m.stats else None),
        )
        self._db.executemany(
            "INSERT INTO message_images (message_id, position, sha256, ext, name) VALUES (?, ?, ?, ?, ?)",
            [(cur.lastrowid, i, r.sha256, r.ext, r.name) for i, r in enumerate(m.images)],
        )

    def _transaction(self) -> _Tx:
        return _Tx(self._db)


class _Tx:
    """BEGIN IMMEDIATE … COMMIT, ROLLBACK on error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


def _read_messages(db: sqlite3.Connection, session_id: int) -> Sequence[Message]:
    rows = db.execute(
        "SELECT id, role, text, stop_reason, stats FROM messages WHERE session_id = ? ORDER BY position",
        (session_id,),
    ).fetchall()
    out = []
    for mid, role, body, stop, stats in rows:
        if role not in ("user", "assistant"):
            continue  # the CHECK constraint is not re-checked on read: a damaged row can say anything
        imgs = db.execute(
            "SELECT sha256, ext, name FROM message_images WHERE message_id = ? ORDER BY position", (mid,)
        ).fetchall()
        # Only well-formed references: the path is built from them, so "../x" must never reach the filesystem.
        refs = tuple(ImageRef(sha, ext, text(name, "image")) for sha, ext, name in imgs
                     if isinstance(sha, str) and isinstance(ext, str) and _SHA256.fullmatch(sha)
                     and _EXT.fullmatch(ext))
        out.append(Message(role, text(body), refs, stop if isinstance(stop, str) else None, json_object(stats)))
    return out


def messages_to_turns(messages: Sequence[Message]) -> list[Turn]:
    """The saved messages as the runtime's conversation turns (role, text, number of images)."""
    return [Turn(m.role, m.text, len(m.images)) for m in messages]  # type: ignore[arg-type]  # role is checked on save
