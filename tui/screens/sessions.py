"""`SessionsScreen`: saved conversations: Enter resumes, r renames, d deletes, Esc closes.

Dismisses with the id of the session to resume, or None. Rename and delete go straight to the store.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Input, Static

from ..store import Store, StoreError


def _age(t: float, now: float) -> str:
    s = max(0, now - t)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{int(s // size)} {unit} ago"
    return "just now"


class SessionsScreen(ModalScreen[int | None]):
    """A table of sessions, newest first."""

    BINDINGS = [
        Binding("escape", "close", "Close"),
        Binding("r", "rename", "Rename"),
        Binding("d,delete", "delete", "Delete"),
    ]

    def __init__(self, store: Store, current: int | None = None, now: float | None = None) -> None:
        super().__init__()
        self.store = store
        self.current = current
        self.now = now  # fixed clock for snapshot tests

    def compose(self) -> ComposeResult:
        with Vertical(id="sessions-box", classes="modal-box"):
            yield Static("Sessions — Enter resume · r rename · d delete · Esc close", classes="title")
            yield DataTable(id="sessions-table", cursor_type="row", zebra_stripes=True)
            yield Input(placeholder="new title, Enter to save", id="rename-input")

    def on_mount(self) -> None:
        self.query_one("#rename-input").display = False
        table = self.query_one(DataTable)
        table.add_columns("", "title", "model", "messages", "updated")
        self._fill()
        table.focus()

    def _fill(self) -> None:
        table = self.query_one(DataTable)
        table.clear()
        now = self.now if self.now is not None else time.time()
        try:
            saved = self.store.sessions()
        except StoreError as e:  # the database failed after opening: say so, keep the app
            self.app.notify(str(e), severity="error")
            return
        for s in saved:
            mark = "●" if s.id == self.current else ""
            model = Path(s.model).name or s.model  # a bundle path shows as its folder name
            # Text, not str: a title is the user's own words, and "[/]" in a str cell is Rich markup (a crash)
            table.add_row(mark, Text(s.title), Text(model), str(s.n_messages), _age(s.updated, now), key=str(s.id))

    def _selected(self) -> int | None:
        table = self.query_one(DataTable)
        if not table.row_count:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        return int(key.value) if key.value is not None else None

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.dismiss(int(event.row_key.value)) if event.row_key.value is not None else None

    def action_close(self) -> None:
        inp = self.query_one("#rename-input", Input)
        if inp.display:
            inp.display = False
            self.query_one(DataTable).focus()
        else:
            self.dismiss(None)

    def action_rename(self) -> None:
        sid = self._selected()
        if sid is None:
            return
        inp = self.query_one("#rename-input", Input)
        try:
            row = self.store.session(sid)
        except StoreError:
            row = None
        inp.value = row.title if row else ""
        inp.display = True
        inp.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        sid = self._selected()
        title = event.value.strip()
        if sid is not None and title:
            try:
                self.store.update_session(sid, title=title)
            except StoreError as e:
                self.app.notify(str(e), severity="error")
            self._fill()
        event.input.display = False
        self.query_one(DataTable).focus()

    def action_delete(self) -> None:
        sid = self._selected()
        if sid is None:
            return
        try:
            self.store.delete_session(sid)
        except StoreError as e:
            self.app.notify(str(e), severity="error")
            return
        self.notify(f"Deleted session {sid}")
        self._fill()
