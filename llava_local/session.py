"""Chat sessions: the conversation, the KV cache that mirrors it, and the generation loop.

Contract (docs/session-api.md): `ChatSession(model).ask(text, images, cancel)` yields events and appends the user
and assistant turns; `answer(turns, images, cancel)` answers a whole conversation given at once (a server's
request); `regenerate`, `clear`, `restore`.

How "a follow-up reuses the KV cache" and "the answer equals a fresh run" are both true: every ask renders the
whole conversation with the bundle's template and tokenizes it the way training did (text between images
tokenized chunk by chunk, BOS on the first chunk only) into *items*: one per position, a token id or an image row
`(image_id, row)`. `Model.kv` lists the items currently in the KV cache. The longest common prefix of the two is
kept, the rest is trimmed (`llama_memory_seq_rm`) and only the remainder is decoded, image rows from the
embedding cache. So a follow-up decodes only its new tokens; a generated answer whose token ids differ from the
re-tokenized answer text is re-decoded from the first differing token; a changed system prompt re-decodes all.
Everything that can fail for a user reason (bad image, context too small) is checked before any state changes.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .bundle import Model
from .config import GenerationConfig
from .embcache import image_id_of
from .engine import Sampler
from .errors import ContextOverflow, ImageError, UsageError
from .events import Event, Finished, ImageEncoded, PromptProcessed, TextChunk
from .preprocess import preprocess
from .templates import Turn, _check_turns, text_chunks
from .textstream import TextStream

ImageSource = str | os.PathLike[str] | bytes


def check_image_file(source: ImageSource) -> Path | None:
    """The path of an image file source (None for bytes), or ImageError if there is no such file. Reads nothing:
    the CLI calls it before loading the model so a typo costs no load time; `ask` then reads and decodes once."""
    if isinstance(source, bytes):
        return None
    path = Path(source).expanduser()
    try:
        if not path.is_file():
            raise ImageError(f"image not found: {source}" if not path.exists() else f"not a file: {source}")
    except OSError as e:  # a name too long for the filesystem, a symlink loop
        raise ImageError(f"cannot read image {str(source)[:200]}: {e.strerror}") from None
    return path


def _read_bytes(source: ImageSource) -> tuple[bytes, str]:
    """(file bytes, name for messages) or ImageError naming the file."""
    if isinstance(source, bytes):
        return source, "<bytes>"
    path, name = Path(source).expanduser(), str(source)
    check_image_file(path)
    try:
        return path.read_bytes(), name
    except OSError as e:
        raise ImageError(f"cannot read image {name}: {e.strerror}") from None


def _pixels(data: bytes, name: str, model: Model) -> npt.NDArray[np.float32]:
    try:
        return preprocess(data, model.manifest.preprocess)
    except ImageError as e:
        raise ImageError(str(e).replace("<bytes>", name)) from None


def _read_image(source: ImageSource, model: Model) -> tuple[str, npt.NDArray[np.float32]]:
    """(image_id, pixels[1,3,S,S]) or ImageError naming the file."""
    data, name = _read_bytes(source)
    return image_id_of(data), _pixels(data, name, model)


def _common_prefix(a: Sequence[Any], b: Sequence[Any]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class ChatSession:
    """One conversation over a loaded model. Not thread-safe: call from one worker thread."""

    def __init__(self, model: Model, generation: GenerationConfig | None = None, system: str | None = None) -> None:
        self.model = model
        self.generation = generation or GenerationConfig()
        self.system = system
        self.stop: tuple[str, ...] = ()  # extra stop strings, on top of the model's; assignable
        self.turns: list[Turn] = []
        self.image_ids: list[str] = []
        self._embs: dict[str, npt.NDArray[np.float32]] = {}  # this conversation's images (survives cache eviction)
        self._regens = 0
        model.claim(self)

    # -- public API ------------------------------------------------------------------------------------------
    @property
    def context_used(self) -> int:
        return self.model.engine.n_past if self.model.owner is self else 0

    @property
    def context_max(self) -> int:
        return self.model.engine.n_ctx

    def ask(self, text: str, images: Sequence[ImageSource] = (), cancel: threading.Event | None = None
            ) -> Iterator[Event]:
        """Ask a question (about `images`, new to this turn). Validates now; the returned iterator does the work."""
        if not isinstance(text, str):
            raise UsageError("the question must be text")
        if self.turns and self.turns[-1].role == "user":
            raise UsageError("the last question has no answer yet; call regenerate() to answer it")
        loaded = [_read_image(src, self.model) for src in images]  # ImageError before any state change
        turns = [*self.turns, Turn("user", text, len(loaded))]
        ids = [*self.image_ids, *(i for i, _ in loaded)]
        items = self._checked_items(turns, ids)  # ContextOverflow before any state change
        return self._ask(turns, ids, loaded, cancel, items)

    def answer(self, turns: Sequence[Turn], images: Sequence[ImageSource] = (),
               cancel: threading.Event | None = None) -> Iterator[Event]:
        """Answer a whole conversation given at once (what an OpenAI-style client sends every turn): `turns`
        alternate user/assistant and end with a question; `images` are all of its images, in order. The session's
        conversation becomes `turns` plus the answer. The KV cache keeps its longest common prefix with the new
        conversation (so a resent history costs only its new tokens), and an image this session already holds or
        the embedding cache knows (by content hash) is neither preprocessed nor encoded again. Validates now, like
        `ask`; the iterator yields `ImageEncoded` for each image new to this session, then what `ask` yields."""
        turns = list(turns)
        _check_turns(turns)
        if turns[-1].role != "user":
            raise UsageError("the conversation must end with a question (a user turn)")
        if sum(t.n_images for t in turns) != len(images):
            raise UsageError(f"the turns hold {sum(t.n_images for t in turns)} images but {len(images)} were given")
        known: dict[str, npt.NDArray[np.float32] | None] = {}  # image_id -> embedding, None: encode it
        pending: dict[str, npt.NDArray[np.float32]] = {}  # image_id -> pixels of images still to encode
        ids: list[str] = []
        for src in images:
            data, name = _read_bytes(src)
            image_id = image_id_of(data)
            ids.append(image_id)
            if image_id in known or image_id in pending:
                continue
            emb = self._embs.get(image_id)
            if emb is None:
                emb = self.model.cache.get(image_id)
                if emb is None:
                    pending[image_id] = _pixels(data, name, self.model)  # ImageError before any state change
            known[image_id] = emb
        items = self._checked_items(turns, ids)  # ContextOverflow before any state change
        return self._answer_all(turns, ids, known, pending, cancel, items)

    def regenerate(self, cancel: threading.Event | None = None) -> Iterator[Event]:
        """Drop the last answer and answer the last question again (a new sample unless greedy)."""
        if not self.turns:
            raise UsageError("nothing to regenerate: ask a question first")
        turns = self.turns[:-1] if self.turns[-1].role == "assistant" else list(self.turns)
        items = self._checked_items(turns, self.image_ids)
        self.turns = turns
        self._regens += 1
        return self._answer(cancel, time.perf_counter(), self.generation.seed + self._regens, items,
                            drop_on_error=False)

    def clear(self) -> None:
        """Forget the conversation; the model stays loaded."""
        self.turns, self.image_ids, self._embs = [], [], {}
        self._regens = 0
        self.model.owner = None
        self.model.claim(self)

    @classmethod
    def restore(cls, model: Model, turns: Sequence[Turn], image_paths: Sequence[ImageSource | str],
                generation: GenerationConfig | None = None, system: str | None = None) -> ChatSession:
        """A session continuing a saved conversation. An image is found by content hash in the embedding cache
        (memory, then disk); the encoder runs only for an image the cache has never seen. An entry of
        `image_paths` may also be an image id (64 hex digits) whose file is gone but whose embedding is cached."""
        turns = list(turns)
        if turns:
            _check_turns(turns)
        if sum(t.n_images for t in turns) != len(image_paths):
            raise UsageError(f"the turns hold {sum(t.n_images for t in turns)} images but {len(image_paths)} "
                             "image paths were given")
        session = cls(model, generation, system)
        for src in image_paths:
            if isinstance(src, str) and len(src) == 64 and not Path(src).exists() and _is_hex(src):
                emb = model.cache.get(src)
                if emb is None:
                    raise ImageError(f"image {src[:12]}… is not in the embedding cache and its file is gone")
                image_id = src
            else:
                image_id, pixels = _read_image(src, model)
                emb, _, _ = model.embed(image_id, pixels)
            session._embs[image_id] = emb
            session.image_ids.append(image_id)
        session.turns = turns
        return session

    # -- internals ---------------------------------------------------------------------------------------------
    def _items(self, turns: Sequence[Turn], ids: Sequence[str]) -> list[Any]:
        """The conversation as KV items: token ids and (image_id, row) pairs, one per position."""
        m = self.model
        system = self.system if self.system is not None else m.manifest.system_prompt
        chunks = text_chunks(m.template.render(turns, system=system))
        if len(chunks) - 1 != len(ids):
            raise UsageError(f"the template placed {len(chunks) - 1} images but the conversation has {len(ids)}")
        items: list[Any] = []
        n_rows = m.manifest.vision.tokens_per_image
        for i, chunk in enumerate(chunks):
            if i > 0:
                items += [(ids[i - 1], r) for r in range(n_rows)]
            if chunk or i == 0:
                items += m.engine.tokenize(chunk, add_bos=i == 0)
        return items

    def _checked_items(self, turns: Sequence[Turn], ids: Sequence[str]) -> list[Any]:
        """The conversation's KV items (rendered and tokenized once: the answer decodes these), or ContextOverflow."""
        items = self._items(turns, ids)
        n = len(items)
        room = self.model.engine.n_ctx
        if n + 1 > room:  # +1: the answer needs at least one position
            raise ContextOverflow(
                f"the conversation needs {n} tokens plus the answer but the context holds {room}; "
                "start a new chat (or clear it), use fewer images, or raise --n-ctx"
            )
        return items

    def _ask(self, turns: list[Turn], ids: list[str], loaded: list[tuple[str, npt.NDArray[np.float32]]],
             cancel: threading.Event | None, items: list[Any]) -> Iterator[Event]:
        t0 = time.perf_counter()
        for image_id, pixels in loaded:
            if image_id in self._embs:
                yield ImageEncoded(image_id, cached=True, seconds=0.0)
                continue
            emb, cached, secs = self.model.embed(image_id, pixels)
            self._embs[image_id] = emb
            yield ImageEncoded(image_id, cached=cached, seconds=secs)
        self.turns, self.image_ids = turns, ids
        yield from self._answer(cancel, t0, self.generation.seed, items)

    def _answer_all(self, turns: list[Turn], ids: list[str], known: dict[str, npt.NDArray[np.float32] | None],
                    pending: dict[str, npt.NDArray[np.float32]], cancel: threading.Event | None,
                    items: list[Any]) -> Iterator[Event]:
        t0 = time.perf_counter()
        embs: dict[str, npt.NDArray[np.float32]] = {}
        for image_id, emb in known.items():
            if emb is None:  # `answer` already looked it up in the cache and missed: encode it
                t_enc = time.perf_counter()
                emb = self.model.encode(image_id, pending[image_id])
                yield ImageEncoded(image_id, cached=False, seconds=time.perf_counter() - t_enc)
            elif image_id not in self._embs:
                yield ImageEncoded(image_id, cached=True, seconds=0.0)
            embs[image_id] = emb
        # Only this conversation's images are kept: a long-running session does not grow with every image it saw.
        self._embs, self.turns, self.image_ids = embs, turns, ids
        yield from self._answer(cancel, t0, self.generation.seed, items)

    def _prefill(self, items: list[Any], cancel: threading.Event | None = None) -> tuple[int, int]:
        """Make the KV cache hold `items`; returns (n_new, n_reused). Logits are ready for the last item, unless
        `cancel` was set: then it stops between two llama_decode calls (n_batch entries each) and the KV cache
        holds a prefix of `items` (`Model.kv` says which), which the next prefill reuses."""
        m, eng = self.model, self.model.engine
        m.claim(self)
        keep = min(_common_prefix(m.kv, items), len(items) - 1)  # re-decode at least the last item for its logits
        eng.trim(keep)
        del m.kv[keep:]
        i = keep
        try:
            while i < len(items):
                if cancel is not None and cancel.is_set():
                    break
                j = i + 1
                end = min(len(items), i + eng.n_batch)  # one llama_decode per chunk: a cancel is seen in between
                if isinstance(items[i], int):
                    while j < end and isinstance(items[j], int):
                        j += 1
                    eng.decode_tokens(items[i:j], logits=j == len(items))
                else:
                    image_id, r0 = items[i]
                    while j < end and isinstance(items[j], tuple) and items[j][0] == image_id:
                        j += 1
                    eng.decode_embeddings(self._embs[image_id][r0:r0 + (j - i)], logits=j == len(items))
                m.kv.extend(items[i:j])
                i = j
        except BaseException:
            eng.trim(len(m.kv))  # keep the bookkeeping and the KV cache in step
            raise
        return i - keep, keep

    def _answer(self, cancel: threading.Event | None, t0: float, seed: int, items: list[Any],
                drop_on_error: bool = True) -> Iterator[Event]:
        """Prefill `items` (the KV items of `self.turns`, checked against the context by the caller) and generate."""
        m, eng, gen = self.model, self.model.engine, self.generation
        try:
            n_new, n_reused = self._prefill(items, cancel)
        except BaseException:
            if drop_on_error:
                self._drop_open_turn()
            raise
        yield PromptProcessed(n_new=n_new, n_reused=n_reused, seconds=time.perf_counter() - t0)
        stream = TextStream((*m.stop_strings, *self.stop))
        reason, n_gen, t_first, t_gen = "length", 0, None, time.perf_counter()
        try:
            with Sampler(eng, gen, seed) as sampler:
                if gen.repeat_penalty != 1.0 and gen.repeat_last_n > 0:  # the penalty also sees the prompt's tail
                    prompt_tokens = [k for k in items if isinstance(k, int)]
                    sampler.accept(prompt_tokens[-gen.repeat_last_n:])
                while True:
                    if cancel is not None and cancel.is_set():
                        reason = "cancelled"
                        break
                    tok = sampler.sample()
                    if eng.is_eog(tok):
                        reason = "eos"
                        break
                    n_gen += 1
                    text, stopped = stream.push(eng.piece(tok))
                    if text:
                        t_first = t_first or time.perf_counter()
                        yield TextChunk(text)
                    if stopped:
                        reason = "stop"
                        break
                    if n_gen >= gen.max_tokens or eng.n_past >= eng.n_ctx:
                        reason = "length"
                        break
                    eng.decode_tokens([tok])
                    m.kv.append(tok)
            tail = stream.flush()
            if tail:
                t_first = t_first or time.perf_counter()
                yield TextChunk(tail)
        finally:
            # Runs on normal end, on errors and when the consumer drops the iterator: the partial answer is kept,
            # so `turns` always alternates and the next ask re-syncs the KV cache from `m.kv`.
            stream.flush()
            self.turns.append(Turn("assistant", stream.text))
        now = time.perf_counter()
        yield Finished(
            text=stream.text, stop_reason=reason, n_prompt_tokens=len(items), n_generated=n_gen,
            time_to_first_token=(t_first or now) - t0, tokens_per_second=n_gen / max(now - t_gen, 1e-9),
            context_used=eng.n_past, context_max=eng.n_ctx,
        )

    def _drop_open_turn(self) -> None:
        """Undo a user turn whose answer never started (prefill failed)."""
        if self.turns and self.turns[-1].role == "user":
            n = self.turns.pop().n_images
            if n:
                del self.image_ids[-n:]


def _is_hex(s: str) -> bool:
    try:
        int(s, 16)
    except ValueError:
        return False
    return True
