"""The llama.cpp engine: one model + one context, driven through llama-cpp-python's low-level API.

Contract:
- `Engine(gguf_path, n_ctx=..., n_batch=..., gpu=...)` loads the GGUF and creates a context (sequence 0 only);
  `within_training_context=True` (the runtime's models) refuses an n_ctx above the GGUF's training context first.
- `tokenize(text, add_bos)` parses special tokens in template text (`</s>` → EOS id).
- `decode_tokens(ids)` / `decode_embeddings(rows)` append at position `n_past`, split into chunks of at most
  `n_batch` entries (more than n_batch entries in one `llama_decode` is a GGML_ASSERT abort, not an error), text
  and embedding rows never share a batch. Only the last entry of a call asks for logits when `logits=True`;
  `decode_tokens(ids, logits="all")` asks for every entry's and returns them as float32 [len(ids), n_vocab]
  (the converter's parity checks compare every position with transformers).
- `trim(n)` keeps the first n positions (`llama_memory_seq_rm`); `logits()` is the last output's logit row.
- `extra_buffers`: llama.cpp's extra CPU weight buffer types (see `llava_local.cpuprobe`); the caller decides.
- `Sampler(engine, GenerationConfig)` builds llama.cpp's sampler chain (penalties → top-k → top-p → temperature →
  dist(seed), or penalties → greedy when temperature is 0).
Everything that could reach a native assert is validated first and raised as `EngineError`/`ContextOverflow`.
`rows_decoded` counts every token and embedding row sent to llama_decode (tests use it to prove KV reuse).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, overload

import numpy as np
import numpy.typing as npt

from . import llamalog
from .config import GenerationConfig
from .errors import ContextOverflow, EngineError, UsageError

_backend_ready = False


def _llama():
    """Import llama_cpp lazily (it loads native libraries) and initialise the backend once."""
    global _backend_ready
    try:
        import llama_cpp
    except ImportError as e:  # pragma: no cover - depends on the install
        raise EngineError(f"llama-cpp-python is not installed ({e}); `pip install llama-cpp-python`") from None
    llamalog.install()
    if not _backend_ready:
        llama_cpp.llama_backend_init()
        _backend_ready = True
    return llama_cpp


def token_piece(llama_cpp, vocab, token: int) -> bytes:
    """The bytes llama.cpp renders for `token` of `vocab` (control tokens: nothing; may be half a character)."""
    buf = ctypes.create_string_buffer(64)
    n = llama_cpp.llama_token_to_piece(vocab, token, buf, 64, 0, False)
    if n < 0:  # the piece needs -n bytes
        buf = ctypes.create_string_buffer(-n)
        n = llama_cpp.llama_token_to_piece(vocab, token, buf, -n, 0, False)
    return buf.raw[:n]


def gpu_offload_supported() -> bool:
    """Whether this llama.cpp build has a GPU backend (CUDA, Metal, ...)."""
    return bool(_llama().llama_supports_gpu_offload())


THREADS_ENV = "LLAVA_LOCAL_THREADS"


def default_threads() -> int:
    """CPU threads: `$LLAVA_LOCAL_THREADS`, else the cores this process may run on (llama.cpp's default is 4).

    On a busy machine fewer threads can be much faster: llama.cpp's workers spin while they wait for each other.
    """
    env = os.environ.get(THREADS_ENV, "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


class Engine:
    """One llama.cpp model and context. Not thread-safe."""

    def __init__(
        self,
        gguf_path: str | Path,
        *,
        n_ctx: int = 2048,
        n_batch: int = 512,
        n_threads: int | None = None,
        gpu: bool = False,
        extra_buffers: bool = True,
        within_training_context: bool = False,
    ) -> None:
        ll = _llama()
        self._ll = ll
        path = Path(gguf_path)
        if not path.is_file():
            raise EngineError(f"GGUF file not found: {path}")
        if n_ctx < 8 or n_batch < 1:
            raise EngineError(f"n_ctx must be >= 8 and n_batch >= 1 (got {n_ctx}, {n_batch})")
        mparams = ll.llama_model_default_params()
        mparams.n_gpu_layers = -1 if gpu else 0
        # Weight repacking / AMX buffer types: faster, but some VMs fault on them (see llava_local.cpuprobe).
        mparams.use_extra_bufts = extra_buffers
        llamalog.clear_errors()
        self._model = ll.llama_model_load_from_file(str(path).encode(), mparams)
        if not self._model:
            raise EngineError(f"llama.cpp could not load {path.name}: {llamalog.recent_errors() or 'unknown error'}")
        self._ctx = None
        self._tok_batch = self._emb_batch = None
        # Before the KV cache is allocated: a bundle whose manifest promises more context than its GGUF was trained
        # for (a mismatched or hostile bundle) would otherwise allocate gigabytes and answer with noise. Opt-in: the
        # converter's parity check sizes a short context itself, whatever the model was trained for.
        n_ctx_train = int(ll.llama_model_n_ctx_train(self._model))
        if within_training_context and 0 < n_ctx_train < n_ctx:
            self.close()
            raise UsageError(f"a context of {n_ctx} tokens is more than {path.name} was trained for; use at most "
                             f"{n_ctx_train} (--n-ctx)")
        threads = n_threads or default_threads()
        cparams = ll.llama_context_default_params()
        cparams.n_ctx = n_ctx
        # n_batch is also capped at n_ctx by llama.cpp; n_ubatch follows n_batch so one chunk is one compute pass.
        cparams.n_batch = min(n_batch, n_ctx)
        cparams.n_ubatch = min(n_batch, n_ctx)
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.no_perf = True
        self._ctx = ll.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            self.close()
            raise EngineError(f"llama.cpp could not create a context of {n_ctx} tokens: {llamalog.recent_errors()}")
        self._vocab = ll.llama_model_get_vocab(self._model)
        self._mem = ll.llama_get_memory(self._ctx)
        self.path = path
        self.gpu = gpu
        self.extra_buffers = extra_buffers
        self.n_threads = threads
        # llama.cpp pads the context up to a multiple of 256; the budget we enforce is what was asked for.
        self.n_ctx = min(n_ctx, int(ll.llama_n_ctx(self._ctx)))
        self.n_batch = int(ll.llama_n_batch(self._ctx))
        self.n_vocab = int(ll.llama_vocab_n_tokens(self._vocab))
        self.n_embd_inp = int(ll.llama_model_n_embd_inp(self._model))
        self.n_ctx_train = int(ll.llama_model_n_ctx_train(self._model))
        self.bos = int(ll.llama_vocab_bos(self._vocab))
        self.eos = int(ll.llama_vocab_eos(self._vocab))
        # Two reusable batches of n_batch entries: one for token ids, one for embedding rows (n_embd_inp floats).
        self._tok_batch = ll.llama_batch_init(self.n_batch, 0, 1)
        self._emb_batch = ll.llama_batch_init(self.n_batch, self.n_embd_inp, 1)
        self.n_past = 0
        self.rows_decoded = 0
        self._has_logits = False

    # -- lifetime -------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Free the context, batches and model (idempotent)."""
        ll = self._ll
        for name in ("_tok_batch", "_emb_batch"):
            b = getattr(self, name, None)
            if b is not None:
                ll.llama_batch_free(b)
                setattr(self, name, None)
        if getattr(self, "_ctx", None):
            ll.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_model", None):
            ll.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    # -- text ---------------------------------------------------------------------------------------------
    def tokenize(self, text: str, add_bos: bool) -> list[int]:
        """Token ids of `text`; special tokens written in the text (`</s>`, `<|im_end|>`) are parsed."""
        data = text.encode("utf-8", "replace")  # a lone surrogate (from a mis-decoded file) must not raise here
        cap = len(data) + 8
        buf = (ctypes.c_int32 * cap)()
        n = self._ll.llama_tokenize(self._vocab, data, len(data), buf, cap, add_bos, True)
        if n < 0:
            cap = -n
            buf = (ctypes.c_int32 * cap)()
            n = self._ll.llama_tokenize(self._vocab, data, len(data), buf, cap, add_bos, True)
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        """The bytes of one token (control tokens render as nothing; may be part of a UTF-8 character)."""
        return token_piece(self._ll, self._vocab, token)

    def is_eog(self, token: int) -> bool:
        return bool(self._ll.llama_vocab_is_eog(self._vocab, token))

    # -- decoding -----------------------------------------------------------------------------------------
    def _check_room(self, n: int) -> None:
        if self.n_past + n > self.n_ctx:
            raise ContextOverflow(
                f"the conversation needs {self.n_past + n} tokens but the context holds {self.n_ctx}; "
                "start a new chat or raise --n-ctx"
            )

    def _run(self, batch, n: int) -> None:
        batch.n_tokens = n
        rc = self._ll.llama_decode(self._ctx, batch)
        if rc != 0:
            # The KV cache may hold part of this chunk now; drop anything past what we account for.
            self._ll.llama_memory_seq_rm(self._mem, 0, self.n_past, -1)
            self._has_logits = False
            reason = {1: "no free KV slot", 2: "aborted"}.get(rc, f"llama_decode returned {rc}")
            raise EngineError(f"llama.cpp decode failed: {reason} {llamalog.recent_errors()}".strip())
        self.n_past += n
        self.rows_decoded += n

    @overload
    def decode_tokens(self, tokens: Sequence[int], logits: bool = True) -> None: ...

    @overload
    def decode_tokens(self, tokens: Sequence[int], logits: Literal["all"]) -> npt.NDArray[np.float32]: ...

    def decode_tokens(self, tokens: Sequence[int], logits: bool | Literal["all"] = True
                      ) -> npt.NDArray[np.float32] | None:
        """Append token ids at `n_past`; logits for the last one when `logits`. With `logits="all"` every
        position asks for logits and they are returned as float32 [len(tokens), n_vocab] (each chunk's rows are
        copied out right after its `llama_decode`, before the next chunk overwrites them)."""
        every = logits == "all"
        if not tokens:
            return np.zeros((0, self.n_vocab), np.float32) if every else None
        bad = [t for t in tokens if not 0 <= t < self.n_vocab]
        if bad:
            raise EngineError(f"token id {bad[0]} is outside the vocabulary (0..{self.n_vocab - 1})")
        self._check_room(len(tokens))
        b = self._tok_batch
        self._has_logits = False
        rows: list[npt.NDArray[np.float32]] = []
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start:start + self.n_batch]
            last_chunk = start + self.n_batch >= len(tokens)
            for i, tok in enumerate(chunk):
                b.token[i] = tok
                b.pos[i] = self.n_past + i
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = 0
                b.logits[i] = 1 if every else 0
            if logits and last_chunk:
                b.logits[len(chunk) - 1] = 1
            self._run(b, len(chunk))
            if every:  # outputs of this batch, in batch order: [len(chunk), n_vocab]
                ptr = self._ll.llama_get_logits(self._ctx)
                rows.append(np.ctypeslib.as_array(ptr, shape=(len(chunk), self.n_vocab)).copy())
        self._has_logits = bool(logits)
        return np.concatenate(rows) if every else None

    def decode_embeddings(self, rows: npt.NDArray[np.floating], logits: bool = False) -> None:
        """Append embedding rows [n, n_embd_inp] at `n_past`, in chunks of at most n_batch rows."""
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self.n_embd_inp:
            raise EngineError(
                f"image embeddings have shape {tuple(rows.shape)} but the language model takes rows of "
                f"{self.n_embd_inp}; the vision and LLM files do not belong together (re-convert the bundle)"
            )
        if not np.isfinite(rows).all():
            raise EngineError("image embeddings contain NaN/inf; the vision model is broken (re-convert the bundle)")
        n = rows.shape[0]
        if n == 0:
            return
        self._check_room(n)
        b = self._emb_batch
        self._has_logits = False
        row_bytes = self.n_embd_inp * 4
        for start in range(0, n, self.n_batch):
            m = min(self.n_batch, n - start)
            ctypes.memmove(b.embd, rows[start:start + m].ctypes.data, m * row_bytes)
            for i in range(m):
                b.pos[i] = self.n_past + i
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = 0
                b.logits[i] = 1 if (logits and start + m == n and i == m - 1) else 0
            self._run(b, m)
        self._has_logits = logits

    def trim(self, n: int) -> None:
        """Keep only positions [0, n) of the KV cache."""
        n = max(0, min(n, self.n_past))
        if n < self.n_past:
            if not self._ll.llama_memory_seq_rm(self._mem, 0, n, -1):
                # A plain KV cache always allows this; other memory types may not: start over.
                self._ll.llama_memory_clear(self._mem, True)
                n = 0
            self.n_past = n
            self._has_logits = False

    def clear(self) -> None:
        """Empty the KV cache."""
        self._ll.llama_memory_clear(self._mem, True)
        self.n_past = 0
        self._has_logits = False

    def logits(self) -> npt.NDArray[np.float32]:
        """A copy of the logits of the last decoded entry that asked for them: float32 [n_vocab]."""
        if not self._has_logits:
            raise EngineError("no logits available: decode something with logits=True first")
        ptr = self._ll.llama_get_logits_ith(self._ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    @property
    def has_logits(self) -> bool:
        return self._has_logits


class Sampler:
    """A llama.cpp sampler chain built from a GenerationConfig. Use as a context manager (frees the chain)."""

    def __init__(self, engine: Engine, gen: GenerationConfig, seed: int | None = None) -> None:
        ll = engine._ll
        self._ll, self._engine = ll, engine
        params = ll.llama_sampler_chain_default_params()
        params.no_perf = True
        self._chain = ll.llama_sampler_chain_init(params)
        add = lambda s: ll.llama_sampler_chain_add(self._chain, s)  # noqa: E731 - the chain owns each sampler
        if gen.repeat_penalty != 1.0 or gen.frequency_penalty or gen.presence_penalty:
            # llama.cpp allocates a ring of `last_n` tokens: more than the context can hold is never needed
            last_n = min(gen.repeat_last_n, engine.n_ctx)
            add(ll.llama_sampler_init_penalties(engine.n_vocab, last_n, gen.repeat_penalty, gen.frequency_penalty,
                                                gen.presence_penalty))
        if gen.temperature == 0:
            add(ll.llama_sampler_init_greedy())
        else:
            if gen.top_k > 0:
                add(ll.llama_sampler_init_top_k(gen.top_k))
            if gen.top_p < 1.0:
                add(ll.llama_sampler_init_top_p(gen.top_p, 1))
            add(ll.llama_sampler_init_temp(gen.temperature))
            add(ll.llama_sampler_init_dist((gen.seed if seed is None else seed) & 0xFFFFFFFF))

    def accept(self, tokens: Sequence[int]) -> None:
        """Tell the penalty sampler about earlier tokens (the tail of the prompt)."""
        for t in tokens:
            self._ll.llama_sampler_accept(self._chain, t)

    def sample(self) -> int:
        """Sample (and accept) the next token from the engine's last logits."""
        if not self._engine.has_logits:
            raise EngineError("no logits to sample from")
        return int(self._ll.llama_sampler_sample(self._chain, self._engine._ctx, -1))

    def close(self) -> None:
        if self._chain is not None:
            self._ll.llama_sampler_free(self._chain)
            self._chain = None

    def __enter__(self) -> Sampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
