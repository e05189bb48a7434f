"""`HelpScreen`: every key binding and slash command, read from the same tables the app uses."""

from __future__ import annotations

from collections.abc import Sequence

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

from ..commands import COMMANDS


class HelpScreen(ModalScreen[None]):
    """Keys (where, key, action) and commands; Esc or q closes."""

    BINDINGS = [Binding("escape,q,f1", "dismiss", "Close")]

    def __init__(self, keys: Sequence[tuple[str, str, str]]) -> None:
        super().__init__()
        self.keys = list(keys)

    def compose(self) -> ComposeResult:
        with Vertical(id="help-box", classes="modal-box"):
            yield Static("Keys", classes="title")
            keys = DataTable(id="help-keys", show_cursor=False, zebra_stripes=True)
            keys.add_columns("where", "key", "does")
            for row in self.keys:
                keys.add_row(*row)
            yield keys
            yield Static("Commands (type / then Tab to complete; // sends a literal /)", classes="title")
            cmds = DataTable(id="help-commands", show_cursor=False, zebra_stripes=True)
            cmds.add_columns("command", "does")
            for c in COMMANDS.values():
                cmds.add_row(f"/{c.name} {c.args}".rstrip(), c.help)
            yield cmds
            yield Static("Esc closes", classes="hint")

    def action_dismiss(self) -> None:  # type: ignore[override]
        self.dismiss(None)
