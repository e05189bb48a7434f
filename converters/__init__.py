"""Converters: a LLaVA checkpoint → a verified offline bundle (ONNX vision + GGUF LLM)."""
