"""`ImageChip`: a small label naming an attached image ("▣ cat.jpg")."""

from __future__ import annotations

from textual.message import Message
from textual.widgets import Static


class ImageChip(Static):
    """One image's name; clicking a removable chip (a pending attachment) asks to remove it."""

    class Remove(Message):
        """The user clicked a removable chip."""

        def __init__(self, chip: ImageChip) -> None:
            super().__init__()
            self.chip = chip

    def __init__(self, name: str, *, index: int = 0, removable: bool = False) -> None:
        label = f"▣ {name}" + (" ✕" if removable else "")
        super().__init__(label, markup=False, classes="removable" if removable else "")
        self.image_name = name
        self.index = index
        self.removable = removable

    def on_click(self) -> None:
        if self.removable:
            self.post_message(self.Remove(self))
