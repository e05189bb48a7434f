"""`AttachmentBar`: chips of the images waiting to be sent with the next question."""

from __future__ import annotations

from collections.abc import Sequence

from textual.containers import Horizontal
from textual.widgets import Static

from .image_chip import ImageChip


class AttachmentBar(Horizontal):
    """Hidden when nothing is attached; click a chip to drop that image."""

    def show(self, names: Sequence[str]) -> None:
        self.remove_children()
        if names:
            self.mount(Static("attached:", classes="label"))
            self.mount_all([ImageChip(n, index=i, removable=True) for i, n in enumerate(names)])
        self.display = bool(names)
