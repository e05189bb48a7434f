"""`UserTurn`: the user's question with its image chips and previews."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Static

from .image_chip import ImageChip
from .image_preview import image_preview


class UserTurn(Vertical, can_focus=True):
    """A question. `images` are (display name, stored path) pairs."""

    BINDINGS = [Binding("c", "copy", "Copy message")]

    def __init__(self, text: str, images: Sequence[tuple[str, Path]] = (), preview: str = "auto") -> None:
        super().__init__(classes="turn user-turn")
        self.text = text
        self.images = list(images)
        self.preview = preview

    def compose(self) -> ComposeResult:
        yield Static("You", classes="role")
        if self.images:
            with Horizontal(classes="chips"):
                for i, (name, _) in enumerate(self.images):
                    yield ImageChip(name, index=i)
            if self.preview != "none":
                with Horizontal(classes="previews"):
                    for _, path in self.images:
                        yield image_preview(path, self.preview)
        yield Static(self.text, classes="body", markup=False)

    def action_copy(self) -> None:
        self.app.copy_to_clipboard(self.text)
        self.app.notify("Copied the question to the clipboard")
