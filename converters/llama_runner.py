"""A minimal llama.cpp driver for verification: token and embedding batches, logits, greedy steps.

Contract: `LlamaRunner(gguf_path, n_ctx)` owns one model + context (sequence 0) and keeps its own position:
`tokenize(text, add_bos)`, `decode_tokens(ids, all_logits=False)` → logits (last row, or every row as
(n, n_vocab)), `decode_embeddings(rows)` (image rows, in chunks of ≤ n_batch: a larger batch aborts the
process, tech memo §1.2), `logits()` of the last output, `piece(token)` bytes and `is_eog(token)` as the runtime
uses them, `close()`.

llama.cpp's extra CPU buffer types (weight repacking, AMX) are used where `llava_local.cpuprobe.extra_buffers_ok`
says they work, as the runtime does: on CPUs that advertise AMX but run in a sandbox that does not enable it,
ggml's AMX buffer type dies with SIGILL on quantized matmuls, and the probe (a child process, cached per machine
and quant) finds that out; elsewhere the repacked weights keep verification fast. `extra_buffers=True/False`
overrides the probe.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from llava_local.engine import token_piece
from llava_local.errors import ConversionError


class LlamaRunner:
    def __init__(self, path: Path, n_ctx: int = 512, n_batch: int = 256, *, quant: str | None = None,
                 extra_buffers: bool | None = None) -> None:
        import llama_cpp

        from llava_local.cpuprobe import extra_buffers_ok

        from .quantize import _silence_llama_log

        self._l = llama_cpp
        _silence_llama_log(llama_cpp)
        llama_cpp.llama_backend_init()
        mp = llama_cpp.llama_model_default_params()
        mp.n_gpu_layers = 0
        if extra_buffers is None:
            # the probe's cache key is (CPU flags, llama-cpp-python version, quant); "llm-q8_0.gguf" → "q8_0"
            extra_buffers = extra_buffers_ok(Path(path), quant or Path(path).stem.removeprefix("llm-"))
        self.extra_buffers = extra_buffers
        mp.use_extra_bufts = extra_buffers
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), mp)
        if not self.model:
            raise ConversionError(f"llama.cpp cannot load {path.name}")
        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch = n_ctx, n_batch, n_batch
        self.ctx = llama_cpp.llama_init_from_model(self.model, cp)
        if not self.ctx:
            llama_cpp.llama_model_free(self.model)
            raise ConversionError(f"llama.cpp cannot create a context for {path.name}")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_embd = llama_cpp.llama_model_n_embd_inp(self.model)
        self.n_batch = llama_cpp.llama_n_batch(self.ctx)
        self.eos = llama_cpp.llama_vocab_eos(self.vocab)
        self.pos = 0

    def tokenize(self, text: str, add_bos: bool, parse_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        buf = (self._l.llama_token * (len(data) + 8))()
        n = self._l.llama_tokenize(self.vocab, data, len(data), buf, len(buf), add_bos, parse_special)
        if n < 0:
            raise ConversionError(f"llama.cpp could not tokenize {text[:40]!r}")
        return list(buf[:n])

    def _decode(self, n: int, fill, want_logits: list[bool], embd: int = 0) -> None:
        l = self._l  # noqa: E741
        batch = l.llama_batch_init(n, embd, 1)
        try:
            batch.n_tokens = n
            fill(batch)
            for i in range(n):
                batch.pos[i] = self.pos + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = want_logits[i]
            rc = l.llama_decode(self.ctx, batch)
            if rc != 0:
                raise ConversionError(f"llama_decode returned {rc}")
            self.pos += n
        finally:
            l.llama_batch_free(batch)

    def decode_tokens(self, ids: list[int], all_logits: bool = False) -> np.ndarray:
        """Decode token ids; returns the last row's logits (n_vocab,) or every row's (n, n_vocab)."""
        out = []
        for start in range(0, len(ids), self.n_batch):
            chunk = ids[start:start + self.n_batch]
            last = start + len(chunk) == len(ids)

            def fill(batch, chunk=chunk):
                for i, t in enumerate(chunk):
                    batch.token[i] = t

            flags = [all_logits or (last and i == len(chunk) - 1) for i in range(len(chunk))]
            self._decode(len(chunk), fill, flags)
            if all_logits:
                out += [self.logits(i) for i in range(len(chunk))]
        return np.stack(out) if all_logits else self.logits()

    def decode_embeddings(self, rows: np.ndarray) -> None:
        """Decode (N, n_embd) float32 rows at the next positions, ≤ n_batch rows per llama_decode."""
        if rows.ndim != 2 or rows.shape[1] != self.n_embd:
            raise ConversionError(f"image rows have shape {rows.shape}, the model expects (N, {self.n_embd})")
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        for start in range(0, len(rows), self.n_batch):
            chunk = rows[start:start + self.n_batch]

            def fill(batch, chunk=chunk):
                ctypes.memmove(batch.embd, chunk.ctypes.data, chunk.nbytes)

            self._decode(len(chunk), fill, [False] * len(chunk), embd=self.n_embd)

    def piece(self, token: int) -> bytes:
        """The bytes of one token as the runtime renders it (control tokens are empty; may be half a character)."""
        return token_piece(self._l, self.vocab, token)

    def is_eog(self, token: int) -> bool:
        return bool(self._l.llama_vocab_is_eog(self.vocab, token))

    def logits(self, i: int = -1) -> np.ndarray:
        ptr = self._l.llama_get_logits_ith(self.ctx, i)
        if not ptr:
            raise ConversionError("llama.cpp returned no logits")
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def close(self) -> None:
        if self.ctx:
            self._l.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            self._l.llama_model_free(self.model)
            self.model = None

    def __enter__(self) -> LlamaRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
