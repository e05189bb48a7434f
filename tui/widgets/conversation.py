"""`Conversation`: the scrolling list of turns, pinned to the bottom unless the user scrolls up."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from textual.containers import VerticalScroll

from .assistant_turn import AssistantTurn
from .suggestions import Suggestions
from .user_turn import UserTurn


class Conversation(VerticalScroll):
    """Holds `UserTurn`s and `AssistantTurn`s in order."""

    def __init__(self, preview: str = "auto", **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.preview = preview

    def on_mount(self) -> None:
        # Textual's anchor: new content keeps the view at the bottom until the user scrolls up,
        # and scrolling back down re-attaches it.
        self.anchor()

    def add_user(self, text: str, images: Sequence[tuple[str, Path]] = ()) -> UserTurn:
        turn = UserTurn(text, images, self.preview)
        self.mount(turn)
        return turn

    def add_assistant(self, text: str = "", footer: str = "") -> AssistantTurn:
        turn = AssistantTurn(text, footer)
        self.mount(turn)
        return turn

    def show_suggestions(self, prompts: Sequence[str]) -> None:
        """The model's suggested questions (the caller shows them on an empty conversation only)."""
        self.hide_suggestions()
        if prompts:
            self.mount(Suggestions(prompts))

    def hide_suggestions(self) -> None:
        self.query(Suggestions).remove()

    def last_answer(self) -> AssistantTurn | None:
        answers = self.query(AssistantTurn)
        return answers.last() if answers else None
