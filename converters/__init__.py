"""Converters: a LLaVA checkpoint → a verified offline bundle (ONNX vision + GGUF LLM)."""

import llava_local  # noqa: F401,E402  (first: it turns onnxruntime's telemetry off before anything imports onnxruntime)
