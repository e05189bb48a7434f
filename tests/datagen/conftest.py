"""Fixtures of the data-pipeline tests; they live in `datagen_fixtures` so test modules can import helpers."""

from __future__ import annotations

from datagen_fixtures import coco_dir, server, tiny_gguf, tiny_gguf_no_system

__all__ = ["coco_dir", "server", "tiny_gguf", "tiny_gguf_no_system"]
