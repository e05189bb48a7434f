"""llava-local runtime: image → preprocessing → ONNX Runtime → embeddings → llama.cpp → answer.

Never imports torch, transformers, onnx or textual (a test enforces it). The public API is small:
`open_model`, `ChatSession`, the config dataclasses, the events and the errors. Names are resolved lazily so
`import llava_local` stays cheap (llama.cpp and ONNX Runtime load only when a model is opened).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Offline for real: onnxruntime's official wheels ship Microsoft's 1DS telemetry, which writes a device id and an
# event queue under ~/.cache/Microsoft/DeveloperTools and uploads them over HTTPS. Only this variable, set before
# onnxruntime is first imported, turns it off (`disable_telemetry_events()` after import does not). Every entry
# point (CLI, TUI, converters, training, bench) imports this package first. An explicit non-empty value is the
# user's own choice and is kept (docs/reliability.md).
if not os.environ.get("ORT_DISABLE_TELEMETRY"):
    os.environ["ORT_DISABLE_TELEMETRY"] = "1"

# public name → module that defines it (imported on first access)
_EXPORTS: dict[str, str] = {
    "open_model": "bundle",
    "Model": "bundle",
    "ModelInfo": "bundle",
    "ChatSession": "session",
    "GenerationConfig": "config",
    "RuntimeConfig": "config",
    "resolve_model": "models",
    "list_models": "models",
    "Turn": "templates",
}

__all__ = [
    "ChatSession", "GenerationConfig", "Model", "ModelInfo", "RuntimeConfig", "Turn", "list_models", "open_model",
    "resolve_model",
]

if TYPE_CHECKING:  # pragma: no cover
    from .bundle import Model, ModelInfo, open_model
    from .config import GenerationConfig, RuntimeConfig
    from .models import list_models, resolve_model
    from .session import ChatSession
    from .templates import Turn


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'llava_local' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
