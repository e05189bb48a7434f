"""A hand-written fake of the runtime's session API (docs/session-api.md), for UI unit tests only.

`FakeBackend` opens a `FakeModel` and makes `FakeSession`s. The session streams scripted words, honours the
cancel event between chunks, raises `ImageError` for a bad image before changing state, and reports
`ImageEncoded(cached=…)` from an encoder cache shared by all models of one backend (like the runtime's disk
cache), counting real "encodes" in `backend.encode_calls`.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from llava_local.config import GenerationConfig
from llava_local.errors import ContextOverflow, ImageError, ModelNotFound
from llava_local.events import Finished, ImageEncoded, PromptProcessed, TextChunk
from llava_local.templates import Turn
from tui.backend import Backend


@dataclass(frozen=True)
class FakeInfo:
    name: str = "fake-llava"
    quant: str = "q4_k_m"
    llm_backend: str = "CPU"
    vision_backend: str = "CPU"
    context_length: int = 2048
    suggested_prompts: tuple[str, ...] = ()


@dataclass
class FakeModel:
    info: FakeInfo


@dataclass
class FakeBackend:
    """Scripted answers: `answers` are consumed in order; when empty, `default_answer` is used."""

    answers: list[str] = field(default_factory=list)
    default_answer: str = "A **red** square on a white background."
    chunk_delay: float = 0.0  # seconds between chunks (cancel tests need a slow stream)
    context_length: int = 2048
    suggested_prompts: tuple[str, ...] = ()
    encode_calls: int = 0
    cache: set[str] = field(default_factory=set)
    sessions: list[FakeSession] = field(default_factory=list)

    def open_model(self, name: str | None) -> FakeModel:
        if name == "crash":
            raise RuntimeError("llama_model_load failed")  # a native failure, not a user mistake
        if name is not None and name.startswith("missing"):
            raise ModelNotFound(f"no model {name!r}: pass a bundle directory or a name from `llava-local info`")
        return FakeModel(FakeInfo(name=name or "fake-llava", context_length=self.context_length,
                                  suggested_prompts=self.suggested_prompts))

    def new_session(self, model: FakeModel, generation: GenerationConfig, system: str | None) -> FakeSession:
        s = FakeSession(self, model, generation, system)
        self.sessions.append(s)
        return s

    def restore_session(self, model: FakeModel, turns: Sequence[Turn], image_paths: Sequence[str],
                        generation: GenerationConfig, system: str | None) -> FakeSession:
        s = self.new_session(model, generation, system)
        s.turns = list(turns)
        s.restored_images = list(image_paths)
        return s

    def as_backend(self) -> Backend:
        return Backend(self.open_model, self.new_session, self.restore_session)


class FakeSession:
    """The `ChatSession` surface the app uses."""

    def __init__(self, backend: FakeBackend, model: FakeModel, generation: GenerationConfig,
                 system: str | None) -> None:
        self.backend, self.model = backend, model
        self.generation, self.system = generation, system
        self.turns: list[Turn] = []
        self.image_ids: list[str] = []
        self.restored_images: list[str] = []
        self.asked: list[tuple[str, list[str]]] = []
        self.context_max = model.info.context_length

    @property
    def context_used(self) -> int:
        return sum(len(t.text.split()) + 4 * t.n_images for t in self.turns)

    def _encode(self, path: str) -> ImageEncoded:
        p = Path(path)
        if not p.is_file():
            raise ImageError(f"image not found: {path}")
        digest = hashlib.sha256(p.read_bytes()).hexdigest()
        cached = digest in self.backend.cache
        if not cached:
            self.backend.encode_calls += 1
            self.backend.cache.add(digest)
        self.image_ids.append(digest)
        return ImageEncoded(digest, cached, 0.001)

    def ask(self, text: str, images: Sequence[str] = (), cancel: threading.Event | None = None) -> Iterator:
        for path in images:  # validate before any state changes, like the runtime
            if not Path(path).is_file():
                raise ImageError(f"image not found: {path}")
        if "OVERFLOW" in text:
            raise ContextOverflow("the conversation no longer fits in 2048 tokens: /clear or /new")
        self.asked.append((text, list(images)))
        # Restored images are looked up (cached) when the next question needs the conversation prefilled.
        pending = [*self.restored_images, *images]
        self.restored_images = []
        self.turns.append(Turn("user", text, len(images)))
        return self._stream(pending, cancel)

    def regenerate(self, cancel: threading.Event | None = None) -> Iterator:
        if self.turns and self.turns[-1].role == "assistant":
            self.turns.pop()
        return self._stream([], cancel)

    def _stream(self, images: list[str], cancel: threading.Event | None) -> Iterator:
        for path in images:
            yield self._encode(path)
        yield PromptProcessed(n_new=10, n_reused=0, seconds=0.001)
        answer = self.backend.answers.pop(0) if self.backend.answers else self.backend.default_answer
        words = answer.split(" ")
        out, stop = "", "eos"
        for i, w in enumerate(words):
            if cancel is not None and cancel.is_set():
                stop = "cancelled"
                break
            if w == "CRASH":
                self.turns.append(Turn("assistant", out))  # like the runtime: the partial answer stays
                raise RuntimeError("llama_decode returned -3")
            chunk = w if i == 0 else " " + w
            out += chunk
            yield TextChunk(chunk)
            if self.backend.chunk_delay:
                time.sleep(self.backend.chunk_delay)
        self.turns.append(Turn("assistant", out))
        yield Finished(out, stop, 10, len(out.split()), 0.05, 42.0, self.context_used, self.context_max)  # type: ignore

    def clear(self) -> None:
        self.turns, self.image_ids = [], []
