"""Frozen configuration for generation and for opening a model.

`GenerationConfig` holds the sampling knobs the CLI flags, the TUI settings screen and the sessions
database all share; `RuntimeConfig` says how to open a bundle (device, context size, threads).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

from .errors import UsageError

Device = Literal["auto", "cpu", "cuda", "metal"]
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "metal")
# An absolute ceiling on --n-ctx checked before any bundle is read (2^20 tokens of KV cache is already tens of GB
# for a 7B model); the bundle's own training context is the real limit, checked when the model opens.
MAX_N_CTX = 1 << 20


@dataclass(frozen=True)
class GenerationConfig:
    """Sampling settings. temperature 0 means greedy decoding."""

    temperature: float = 0.2
    top_p: float = 0.95
    top_k: int = 40
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    max_tokens: int = 512
    seed: int = 0
    # OpenAI-style penalties (llama.cpp's penalties sampler) over the last repeat_last_n tokens of the answer (and of
    # the prompt when repeat_penalty is on): a token's logit drops by frequency_penalty per earlier occurrence and by
    # presence_penalty once if it occurred at all.
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            # Exact types: a session row or a settings form can carry "0.2" or True; json gives int for 1.0.
            if f.type == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise UsageError(f"{f.name} must be a whole number, got {value!r}")
            if f.type == "float":
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise UsageError(f"{f.name} must be a number, got {value!r}")
                if not math.isfinite(value):  # nan passes every `<` test below, inf overflows the sampler
                    raise UsageError(f"{f.name} must be a finite number, got {value}")
        if self.temperature < 0:
            raise UsageError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UsageError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise UsageError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        for name in ("top_k", "repeat_last_n", "max_tokens"):  # llama.cpp takes them as int32
            if not 0 <= getattr(self, name) < 2**31:
                raise UsageError(f"{name} must be between 0 and {2**31 - 1}, got {getattr(self, name)}")
        if self.repeat_penalty <= 0:
            raise UsageError(f"repeat_penalty must be > 0, got {self.repeat_penalty}")
        for name in ("frequency_penalty", "presence_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise UsageError(f"{name} must be in [-2, 2], got {getattr(self, name)}")
        if self.max_tokens <= 0:
            raise UsageError(f"max_tokens must be > 0, got {self.max_tokens}")

    def with_(self, **changes: Any) -> GenerationConfig:
        """A copy with some fields changed (validated)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GenerationConfig:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


@dataclass(frozen=True)
class RuntimeConfig:
    """How to open a bundle."""

    device: str = "auto"  # one of DEVICES
    n_ctx: int | None = None  # None: the manifest's context_length
    n_threads: int | None = None  # None: llama.cpp's default
    quant: str | None = None  # which GGUF in the bundle; None: the manifest default
    vision_dtype: str | None = None  # which ONNX in the bundle; None: the best for the backend (bundle.py)
    embedding_cache: bool = True  # cache image embeddings on disk (cache dir)

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise UsageError(f"--device must be one of {', '.join(DEVICES)}, not {self.device!r}")
        if self.n_ctx is not None and not 0 < self.n_ctx <= MAX_N_CTX:
            raise UsageError(f"--n-ctx must be between 1 and {MAX_N_CTX}, got {self.n_ctx}")
