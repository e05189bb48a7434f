"""`HelpScreen`: every key binding and slash command, read from the same tables the app uses."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from ..commands import COMMANDS


def _table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
    t = Table(title=title, title_justify="left", title_style="bold", box=None, pad_edge=False,
              header_style="bold", row_styles=["", "dim"])
    for h in headers:
        t.add_column(h, no_wrap=h != "does")
    for row in rows:
        t.add_row(*row)
    return t


class HelpScreen(ModalScreen[None]):
    """Keys (where, key, does) and commands; Esc, q or F1 closes."""

    BINDINGS = [Binding("escape,q,f1", "dismiss", "Close")]

    def __init__(self, keys: Sequence[tuple[str, str, str]]) -> None:
        super().__init__()
        self.keys = list(keys)

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box", classes="modal-box"):
            yield Static(_table("Keys", ("where", "key", "does"), self.keys), id="help-keys")
            cmds = [(f"/{c.name} {c.args}".rstrip(), c.help) for c in COMMANDS.values()]
            title = "Commands — type / then Tab completes; // sends a literal /"
            yield Static(_table(title, ("command", "does"), cmds), id="help-commands")
            yield Static("Esc closes", classes="hint")

    def action_dismiss(self) -> None:  # type: ignore[override]
        self.dismiss(None)
