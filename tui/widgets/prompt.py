"""`PromptInput`: the multi-line prompt. Enter sends; Shift+Enter, Ctrl+J or Alt+Enter insert a newline.

Tab completes a slash command, a `/set` key or a `/image` path (the candidates are shown in the hint line
under the prompt). Pasting or dropping image file paths attaches them instead of inserting the text.
"""

from __future__ import annotations

from pathlib import Path

from textual import events
from textual.binding import Binding
from textual.message import Message
from textual.widgets import TextArea

from ..attach import pasted_images
from ..commands import common_prefix, complete


class PromptInput(TextArea):
    """A TextArea that posts `Submitted` on Enter."""

    BINDINGS = [
        Binding("shift+enter,ctrl+j,alt+enter", "newline", "Newline", show=False),
        Binding("tab", "complete", "Complete", show=False),
    ]

    class Submitted(Message):
        """Enter was pressed with this text."""

        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    class ImagesPasted(Message):
        """A paste consisted only of image paths."""

        def __init__(self, paths: list[Path]) -> None:
            super().__init__()
            self.paths = paths

    class CompletionsChanged(Message):
        """The candidates for the current text changed (shown under the prompt)."""

        def __init__(self, options: list[str]) -> None:
            super().__init__()
            self.options = options

    def __init__(self, **kwargs: object) -> None:
        super().__init__(soft_wrap=True, show_line_numbers=False, tab_behavior="focus", **kwargs)  # type: ignore

    # Textual calls `_on_<event>` of every class in the MRO until one prevents the default, so these
    # handlers only act on what they take over (Enter, image-path pastes) and leave the rest to TextArea.
    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            self.post_message(self.Submitted(self.text))

    async def _on_paste(self, event: events.Paste) -> None:
        paths = pasted_images(event.text)
        if paths:
            event.stop()
            event.prevent_default()
            self.post_message(self.ImagesPasted(paths))

    def action_newline(self) -> None:
        self.insert("\n")

    def action_complete(self) -> None:
        options = complete(self.text)
        if not options:
            return
        prefix = common_prefix(options)
        if len(prefix) > len(self.text):
            self.text = prefix
            self.move_cursor(self.document.end)
        self.post_message(self.CompletionsChanged(complete(self.text)))

    def on_text_area_changed(self, event: TextArea.Changed) -> None:
        self.post_message(self.CompletionsChanged(complete(self.text) if self.text.startswith("/") else []))

    def set_text(self, text: str) -> None:
        self.text = text
        self.move_cursor(self.document.end)
