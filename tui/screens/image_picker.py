"""`ImagePickerScreen`: browse folders, preview the highlighted image, Enter attaches it.

Dismisses with the chosen `Path`, or None on Esc. Only folders and image files are listed.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import DirectoryTree, Static

from ..attach import IMAGE_SUFFIXES
from ..widgets.image_preview import image_preview


class ImageTree(DirectoryTree):
    """A DirectoryTree showing folders and image files, hidden entries left out."""

    def filter_paths(self, paths: Iterable[Path]) -> Iterable[Path]:
        return [p for p in paths if not p.name.startswith(".")
                and (p.is_dir() or p.suffix.lower() in IMAGE_SUFFIXES)]


class ImagePickerScreen(ModalScreen[Path | None]):
    """Left: the tree; right: a preview of the highlighted file."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, start: Path, preview: str = "auto") -> None:
        super().__init__()
        self.start = start
        self.preview = preview

    def compose(self) -> ComposeResult:
        with Vertical(id="picker-box", classes="modal-box"):
            yield Static("Attach an image — Enter attach · Esc cancel", classes="title")
            with Horizontal():
                yield ImageTree(self.start, id="picker-tree")
                yield Vertical(Static("(highlight an image to preview it)"), id="picker-preview")

    def on_tree_node_highlighted(self, event: DirectoryTree.NodeHighlighted) -> None:
        data = event.node.data
        path = getattr(data, "path", None)
        if path is None or not Path(path).is_file():
            return
        box = self.query_one("#picker-preview")
        box.remove_children()
        box.mount(Static(Path(path).name, markup=False), image_preview(Path(path), self.preview))

    def on_directory_tree_file_selected(self, event: DirectoryTree.FileSelected) -> None:
        self.dismiss(Path(event.path))

    def action_cancel(self) -> None:
        self.dismiss(None)
