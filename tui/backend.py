"""The app's one door to the runtime: open a model, start or restore a chat session.

Contract: `LlavaApp` receives a `Backend` through `__init__` and never imports the engine itself, so tests
pass a hand-written fake backend (no monkeypatching) and the real one is `llava_backend(RuntimeConfig)`.
All three callables may be slow (loading a GGUF, prefilling a restored conversation): the app calls them
from a worker thread. They raise `llava_local.errors.LlavaLocalError` subclasses for user mistakes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from llava_local.config import GenerationConfig, RuntimeConfig
from llava_local.templates import Turn


@dataclass(frozen=True)
class Backend:
    """open_model(name|None) → model with `.info`; new_session/restore_session → a `ChatSession`-like object."""

    open_model: Callable[[str | None], Any]
    new_session: Callable[[Any, GenerationConfig, str | None], Any]
    restore_session: Callable[[Any, Sequence[Turn], Sequence[str], GenerationConfig, str | None], Any]


def llava_backend(runtime: RuntimeConfig) -> Backend:
    """The real backend: `llava_local.open_model` and `ChatSession` (imported when first used)."""

    def open_model(name: str | None) -> Any:
        from llava_local import open_model as _open

        return _open(name, runtime)

    def new_session(model: Any, generation: GenerationConfig, system: str | None) -> Any:
        from llava_local import ChatSession

        return ChatSession(model, generation=generation, system=system)

    def restore_session(model: Any, turns: Sequence[Turn], image_paths: Sequence[str],
                        generation: GenerationConfig, system: str | None) -> Any:
        from llava_local import ChatSession

        return ChatSession.restore(model, list(turns), list(image_paths), generation=generation, system=system)

    return Backend(open_model, new_session, restore_session)
