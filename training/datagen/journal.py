"""An append-only journal of finished jobs, so a killed run resumes without losing or duplicating samples.

Contract: the file is JSON lines. Line 1 is a header `{"journal": 1, "settings": {...}}`; each later line is
one finished job, `{"job": id, "sample": {...}}` or `{"job": id, "reject": reason, "detail": str}`.
`commit(entries)` writes whole lines and fsyncs before returning, so an entry on disk is a finished job
and a job not on disk is redone. On open, a torn last line (the process died mid-write) is cut off; a bad
line anywhere else, or a header whose settings differ from this run's, is an error — resuming with other
settings would mix two datasets in one file. The output JSON is always rebuilt from the journal.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .records import DatagenError

VERSION = 1


class Journal:
    """Finished jobs on disk; `done` maps job id → entry (first occurrence wins)."""

    def __init__(self, path: Path, settings: dict, restart: bool = False) -> None:
        self.path = Path(path)
        self.done: dict[str, dict] = {}
        if restart and self.path.exists():
            self.path.unlink()
        has_header = self.path.exists() and self._load(settings)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")
        if not has_header:
            self._write([{"journal": VERSION, "settings": settings}])

    def _load(self, settings: dict) -> bool:
        """Read finished jobs; cut a torn tail; True if the file holds a header."""
        data = self.path.read_bytes()
        cut = data.rfind(b"\n") + 1  # bytes after the last newline are a torn write
        header = False
        for i, raw in enumerate(data[:cut].split(b"\n")[:-1]):
            if not raw.strip():
                continue
            try:
                entry = json.loads(raw)
            except ValueError:
                raise DatagenError(f"{self.path}:{i + 1}: corrupt journal line; use --restart to start over") from None
            if not header:
                if entry.get("journal") != VERSION or entry.get("settings") != settings:
                    raise DatagenError(
                        f"{self.path}: this journal was written with other settings; use the same options to resume, "
                        "or --restart to start over")
                header = True
            else:
                self.done.setdefault(entry["job"], entry)
        if cut < len(data):
            with open(self.path, "r+b") as fh:
                fh.truncate(cut)
                fh.flush()
                os.fsync(fh.fileno())
        return header

    def _write(self, entries: list[dict]) -> None:
        self._fh.write("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries))
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def commit(self, entries: list[dict]) -> None:
        """Append finished jobs durably (one fsync for the batch)."""
        if entries:
            self._write(entries)
            for e in entries:
                self.done.setdefault(e["job"], e)

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
