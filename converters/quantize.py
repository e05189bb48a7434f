"""Quantize an F32/F16 GGUF with llama.cpp's own quantizer (`llama_cpp.llama_model_quantize`).

Contract: `quantize(src, dst, quant)` writes `dst` in `quant`, a key of `llava_local.manifest.LLM_QUANTS` (whose
value is the llama.cpp `LLAMA_FTYPE_*`), already validated by `ConvertOptions`. llama.cpp's per-tensor log lines
go through `llava_local.llamalog` (quiet unless LLAVA_LOCAL_DEBUG=1; its last error lines end up in the message).
gguf-py cannot produce K-quants (tech memo §3), so every type goes through llama.cpp. K-quants need rows that are
multiples of 256; llama.cpp falls back per tensor otherwise (Q4_K → Q5_0, Q6_K → Q8_0, ...), which is allowed but
reported by `tensor_types`.
"""

from __future__ import annotations

import ctypes
from collections import Counter
from pathlib import Path

from llava_local import llamalog
from llava_local.errors import ConversionError
from llava_local.manifest import LLM_FTYPES, LLM_QUANTS


def quantize(src: Path, dst: Path, quant: str, n_threads: int = 0) -> Path:
    """Quantize `src` (F32/F16 GGUF) to `dst` as `quant` (a llama.cpp file type name, `LLM_FTYPES`); ConversionError
    for an unknown name or if llama.cpp refuses."""
    if quant not in LLM_FTYPES:
        raise ConversionError(f"unknown quantization {quant!r}; choose from {', '.join(LLM_QUANTS)}")
    try:
        import llama_cpp
    except ImportError:
        raise ConversionError("quantizing needs llama-cpp-python (pip install llama-cpp-python)") from None
    llamalog.install()  # one line per tensor otherwise; the converter reports its own progress
    llamalog.clear_errors()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = LLM_FTYPES[quant]
    params.nthread = n_threads
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0 or not dst.is_file():
        raise ConversionError(f"llama.cpp could not quantize {src.name} to {quant} (code {rc}) "
                              f"{llamalog.recent_errors()}".strip())
    return dst


def tensor_types(path: Path) -> Counter:
    """How many tensors of each GGML type a GGUF holds, e.g. Counter({'Q4_K': 10, 'F32': 5, 'Q6_K': 3})."""
    import gguf

    return Counter(t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors)
