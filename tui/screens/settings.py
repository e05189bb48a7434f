"""`SettingsScreen`: generation settings and the system prompt.

Dismisses with `(GenerationConfig, system)` on Save (validated by `GenerationConfig` itself: a bad value
becomes a notification and the screen stays), or None on Esc. An empty system prompt means the template's.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, TextArea

from llava_local.config import GenerationConfig
from llava_local.errors import LlavaLocalError

FIELDS = ("temperature", "top_p", "top_k", "repeat_penalty", "max_tokens", "seed")


class SettingsScreen(ModalScreen[tuple[GenerationConfig, str | None] | None]):
    """A form over `GenerationConfig` plus the system prompt. Ctrl+S saves, Esc cancels."""

    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("ctrl+s", "save", "Save")]

    def __init__(self, generation: GenerationConfig, system: str | None) -> None:
        super().__init__()
        self.generation = generation
        self.system = system

    def compose(self) -> ComposeResult:
        with Vertical(id="settings-box", classes="modal-box"):
            yield Label("Settings — Ctrl+S save · Esc cancel", classes="title")
            for name in FIELDS:
                with Horizontal(classes="field"):
                    yield Label(name, classes="field-name")
                    yield Input(str(getattr(self.generation, name)), id=f"set-{name}")
            yield Label("system prompt (empty: the model's default)", classes="field-name")
            yield TextArea(self.system or "", id="set-system")
            with Horizontal(classes="buttons"):
                yield Button("Save", variant="primary", id="save")
                yield Button("Cancel", id="cancel")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.action_save() if event.button.id == "save" else self.action_cancel()

    def action_save(self) -> None:
        values = {}
        for name in FIELDS:
            raw = self.query_one(f"#set-{name}", Input).value.strip()
            kind = type(getattr(self.generation, name))
            try:
                values[name] = kind(raw)
            except ValueError:
                self.notify(f"{name}: {raw!r} is not a {kind.__name__}", severity="error")
                return
        try:
            cfg = self.generation.with_(**values)
        except LlavaLocalError as e:
            self.notify(str(e), severity="error")
            return
        system = self.query_one("#set-system", TextArea).text.strip() or None
        self.dismiss((cfg, system))

    def action_cancel(self) -> None:
        self.dismiss(None)
