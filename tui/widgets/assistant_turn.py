"""`AssistantTurn`: a streamed Markdown answer with its statistics line.

`append(text)` renders incrementally (Textual's `Markdown.append` re-parses only the last block);
`finish(...)` adds "time to first token · tokens/s" and marks a cancelled answer as stopped.
Model text passes through `llava_local.textsafe` on the way in (streamed chunks and whole texts alike), so no
escape sequence or control character from a model ever reaches the terminal.
"""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import Markdown, Static

from llava_local.textsafe import TerminalText, clean


class AssistantTurn(Vertical, can_focus=True):
    """An answer; `text` is the raw Markdown received so far."""

    BINDINGS = [Binding("c", "copy", "Copy message")]

    def __init__(self, text: str = "", footer: str = "") -> None:
        super().__init__(classes="turn assistant-turn")
        self._safe = TerminalText()
        self.text = text
        self._footer = footer

    @property
    def text(self) -> str:
        return self._text

    @text.setter
    def text(self, value: str) -> None:
        self._text = clean(value)

    def compose(self) -> ComposeResult:
        yield Static("Assistant", classes="role")
        yield Markdown(self.text, classes="body")
        yield Static(self._footer or "…", classes="footer", markup=False)

    def append(self, chunk: str) -> None:
        """Add streamed text."""
        chunk = self._safe.feed(chunk)
        self._text += chunk
        self.query_one(Markdown).append(chunk)

    def finish(self, footer: str, stopped: bool = False) -> None:
        """Show the statistics; a cancelled answer keeps its text and says it was stopped."""
        self._footer = footer
        # Markdown.append can drop a space where a chunk boundary meets inline markup ("**red square**with");
        # one final full render makes the finished answer exact.
        self.query_one(Markdown).update(self.text)
        if stopped:
            self.add_class("stopped")
        self.query_one(".footer", Static).update(footer)

    def action_copy(self) -> None:
        self.app.copy_to_clipboard(self.text)
        self.app.notify("Copied the answer to the clipboard")


def stats_line(stats: dict[str, Any], stop_reason: str | None) -> str:
    """"TTFT 0.12 s · 35.0 tok/s · 48 tok" plus "⏹ stopped" / "max tokens reached"."""
    parts = []
    if stats.get("ttft") is not None:
        tps, n = stats.get("tps") or 0, stats.get("n_generated", 0)
        parts.append(f"TTFT {stats['ttft']:.2f} s · {tps:.1f} tok/s · {n} tok")
    if stop_reason == "cancelled":
        parts.append("⏹ stopped")
    elif stop_reason == "length":
        parts.append("max tokens reached")
    return " · ".join(parts)

