"""llava-local runtime: image → preprocessing → ONNX Runtime → embeddings → llama.cpp → answer.

Never imports torch, transformers, onnx or textual (a test enforces it). The public API is small:
`open_model`, `ChatSession`, the config dataclasses, the events and the errors.
"""

from __future__ import annotations

__version__ = "0.1.0"
