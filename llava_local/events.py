"""Events a chat session yields while it answers.

`ChatSession.ask(...)` is a generator of these, in order: zero or more `ImageEncoded` (one per new image,
`cached=True` when the embedding came from the cache), one `PromptProcessed` (prefill done), then
`TextChunk`s as the answer streams, then exactly one `Finished`. The CLI prints `TextChunk.text`; the TUI
renders them and the statistics of `Finished`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

StopReason = Literal["eos", "stop", "length", "cancelled"]


@dataclass(frozen=True)
class ImageEncoded:
    """An image's embedding is ready. `image_id` is its content hash (sha256 of the file bytes)."""

    image_id: str
    cached: bool
    seconds: float


@dataclass(frozen=True)
class PromptProcessed:
    """The prompt is in the KV cache. `n_new` tokens/rows were decoded; `n_reused` were already there."""

    n_new: int
    n_reused: int
    seconds: float


@dataclass(frozen=True)
class TextChunk:
    """Newly generated answer text (UTF-8 safe: never half a character)."""

    text: str


@dataclass(frozen=True)
class Finished:
    """The answer is complete. Times in seconds; `context_used`/`context_max` in tokens."""

    text: str
    stop_reason: StopReason
    n_prompt_tokens: int
    n_generated: int
    time_to_first_token: float
    tokens_per_second: float
    context_used: int
    context_max: int


Event = ImageEncoded | PromptProcessed | TextChunk | Finished
