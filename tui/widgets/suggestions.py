"""`Suggestions`: the questions a bundle suggests (its manifest's `suggested_prompts`), shown on an empty conversation.

Each one is focusable: Enter or a click posts `Suggestions.Chosen(text)`, and the app puts the text in the prompt,
so a new user sees what this model can answer and can try it in one key. The app removes the block when the first
question is sent.
"""

from __future__ import annotations

from collections.abc import Sequence

from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Static


class SuggestedPrompt(Static, can_focus=True):
    """One suggested question."""

    BINDINGS = [Binding("enter", "choose", "Use this question")]

    def __init__(self, text: str) -> None:
        super().__init__(f"› {text}", classes="suggestion", markup=False)
        self.text = text

    def action_choose(self) -> None:
        self.post_message(Suggestions.Chosen(self.text))

    def on_click(self, event: events.Click) -> None:
        self.action_choose()


class Suggestions(Vertical):
    """The block of suggested questions."""

    class Chosen(Message):
        """A suggestion was picked: put `text` in the prompt."""

        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    def __init__(self, prompts: Sequence[str]) -> None:
        super().__init__(classes="turn suggestions")
        self.prompts = list(prompts)

    def compose(self) -> ComposeResult:
        yield Static("Try asking  [not bold dim](click one, or focus it and press Enter)[/]", classes="role")
        for text in self.prompts:
            yield SuggestedPrompt(text)
