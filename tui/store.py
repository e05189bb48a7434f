"""Sessions on disk: one SQLite database plus a content-addressed image folder.

Contract: `Store(data_dir)` opens (creating if needed) `data_dir/sessions.db` in WAL mode and
`data_dir/images/`. A chat is persisted one *finished turn* at a time: `save_turn` writes the user message,
its images and the answer in one transaction, so a `kill -9` at any moment leaves either the whole turn or
none of it. Images are copied into `images/<sha256>.<ext>` *before* the transaction (write to a temp file,
fsync, rename), so a stored message never points at a missing file and a session survives the original
file moving. Stdlib only (sqlite3); no Textual imports, so the store is testable on its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llava_local.templates import Turn

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
        # isolation_level=None: we open transactions ourselves (BEGIN IMMEDIATE … COMMIT), one per turn.
        self._db = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk when save_turn returns, so a finished turn survives power loss too.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

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
    def create_session(self, title: str, model: str, settings: dict[str, Any], system: str | None) -> int:
        now = time.time()
        cur = self._db.execute(
            "INSERT INTO sessions (title, model, settings, system, created, updated) VALUES (?, ?, ?, ?, ?, ?)",
            (title, model, json.dumps(settings), system, now, now),
        )
        return int(cur.lastrowid)

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

    def delete_session(self, session_id: int) -> None:
        """Delete a session and its messages. Image files stay: other sessions may share them."""
        self._db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))

    def sessions(self) -> list[SessionRow]:
        """All sessions, most recently updated first."""
        rows = self._db.execute(
            "SELECT s.id, s.title, s.model, s.settings, s.system, s.updated, "
            "(SELECT COUNT(*) FROM messages m WHERE m.session_id = s.id) "
            "FROM sessions s ORDER BY s.updated DESC, s.id DESC"
        ).fetchall()
        return [SessionRow(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], r[6]) for r in rows]

    def session(self, session_id: int) -> SessionRow | None:
        return next((s for s in self.sessions() if s.id == session_id), None)

    def messages(self, session_id: int) -> list[Message]:
        """A session's messages in conversation order, with their images."""
        rows = self._db.execute(
            "SELECT id, role, text, stop_reason, stats FROM messages WHERE session_id = ? ORDER BY position",
            (session_id,),
        ).fetchall()
        out = []
        for mid, role, text, stop, stats in rows:
            imgs = self._db.execute(
                "SELECT sha256, ext, name FROM message_images WHERE message_id = ? ORDER BY position", (mid,)
            ).fetchall()
            out.append(Message(role, text, tuple(ImageRef(*i) for i in imgs), stop, json.loads(stats or "{}")))
        return out

    # -- turns ----------------------------------------------------------------------------------
    def save_turn(self, session_id: int, user: Message, answer: Message) -> None:
        """Append a finished turn (question + answer) in one transaction."""
        with self._transaction():
            (n,) = self._db.execute("SELECT COUNT(*) FROM messages WHERE session_id = ?", (session_id,)).fetchone()
            self._insert(session_id, n, user)
            self._insert(session_id, n + 1, answer)
            self._db.execute("UPDATE sessions SET updated = ? WHERE id = ?", (time.time(), session_id))

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


def messages_to_turns(messages: Sequence[Message]) -> list[Turn]:
    """The saved messages as the runtime's conversation turns (role, text, number of images)."""
    return [Turn(m.role, m.text, len(m.images)) for m in messages]  # type: ignore[arg-type]  # role is checked on save
