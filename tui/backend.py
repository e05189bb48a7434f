"""The app's one door to the runtime: open a model, start or restore a chat session.

Contract: `LlavaApp` receives a `Backend` through `__init__` and never imports the engine itself, so tests
pass a hand-written fake backend (no monkeypatching) and the real one is `llava_backend(RuntimeConfig)`.
`LoadedModel` and `ChatLike` are the parts of `llava_local.Model` / `ChatSession` the app uses (the fakes in
tests/tui/tuifakes.py have the same shape).
All three callables may be slow (loading a GGUF, prefilling a restored conversation): the app calls them
from a worker thread. They raise `llava_local.errors.LlavaLocalError` subclasses for user mistakes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from llava_local.config import GenerationConfig, RuntimeConfig
from llava_local.events import Event
from llava_local.templates import Turn


class ModelInfoLike(Protocol):
    """What the status bar shows (`llava_local.bundle.ModelInfo`)."""

    @property
    def name(self) -> str: ...
    @property
    def quant(self) -> str: ...
    @property
    def llm_backend(self) -> str: ...
    @property
    def vision_backend(self) -> str: ...
    @property
    def context_length(self) -> int: ...


class LoadedModel(Protocol):
    """An open model (`llava_local.Model`); its `close()`, when it has one, frees native memory."""

    @property
    def info(self) -> ModelInfoLike: ...


class ChatLike(Protocol):
    """The `llava_local.ChatSession` surface the app uses."""

    generation: GenerationConfig
    system: str | None

    @property
    def context_used(self) -> int: ...
    def ask(self, text: str, images: Sequence[str] = (), cancel: threading.Event | None = None
            ) -> Iterator[Event]: ...
    def regenerate(self, cancel: threading.Event | None = None) -> Iterator[Event]: ...
    def clear(self) -> None: ...


@dataclass(frozen=True)
class Backend:
    """open_model(name|None) → a `LoadedModel`; new_session/restore_session → a `ChatLike` session."""

    open_model: Callable[[str | None], LoadedModel]
    new_session: Callable[[LoadedModel, GenerationConfig, str | None], ChatLike]
    restore_session: Callable[[LoadedModel, Sequence[Turn], Sequence[str], GenerationConfig, str | None], ChatLike]


def llava_backend(runtime: RuntimeConfig) -> Backend:
    """The real backend: `llava_local.open_model` and `ChatSession` (imported when first used)."""

    def open_model(name: str | None) -> LoadedModel:
        from llava_local import open_model as _open

        return _open(name, runtime)

    def new_session(model: LoadedModel, generation: GenerationConfig, system: str | None) -> ChatLike:
        from llava_local import ChatSession

        return ChatSession(model, generation=generation, system=system)

    def restore_session(model: LoadedModel, turns: Sequence[Turn], image_paths: Sequence[str],
                        generation: GenerationConfig, system: str | None) -> ChatLike:
        from llava_local import ChatSession

        return ChatSession.restore(model, list(turns), list(image_paths), generation=generation, system=system)

    return Backend(open_model, new_session, restore_session)
