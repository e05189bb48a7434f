"""`ImagePreview`: an inline picture scaled to the pane (Kitty / Sixel / Unicode half-blocks).

`textual_image.widget.Image` picks the best protocol the terminal supports; the app can force
`"halfcell"` (deterministic, used by snapshot tests) or `"none"` (no previews, only chips).
"""

from __future__ import annotations

from pathlib import Path

from textual.widget import Widget
from textual.widgets import Static

PREVIEW_KINDS = ("auto", "halfcell", "unicode", "none")


def image_preview(path: Path, kind: str = "auto") -> Widget:
    """A widget showing the image at `path`, or a placeholder if it cannot be drawn."""
    from textual_image import widget as ti

    cls = {"auto": ti.Image, "halfcell": ti.HalfcellImage, "unicode": ti.UnicodeImage}.get(kind)
    if cls is None:
        return Static("", classes="image-preview hidden")
    try:
        w = cls(str(path), classes="image-preview")
    except Exception:  # a broken file must never take the conversation view down
        return Static(f"(cannot preview {path.name})", classes="image-preview", markup=False)
    return w
