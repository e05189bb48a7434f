"""One error hierarchy for llava-local.

Every failure a user can cause (a missing file, a bad image, a broken bundle, a full context) raises a
subclass of `LlavaLocalError` whose message says what went wrong and how to fix it. The edges catch them:
the CLI prints one line and exits non-zero, the TUI shows a notification. `assert` is kept for internal
invariants only. Stopping an answer is not an error: the session finishes with `stop_reason="cancelled"` and keeps
the partial answer (llava_local/events.py).
"""

from __future__ import annotations


class LlavaLocalError(Exception):
    """Base class: a problem the user can act on. `str(err)` is a one-line message."""

    exit_code = 1


class UsageError(LlavaLocalError):
    """Bad command-line arguments or option values."""

    exit_code = 2


class ImageError(LlavaLocalError):
    """An image file is missing, unreadable or not an image."""


class BundleError(LlavaLocalError):
    """A bundle directory or its manifest is missing, malformed or does not match its files."""


class ModelNotFound(BundleError):
    """A `--model` name or path resolves to nothing."""


class ContextOverflow(LlavaLocalError):
    """The conversation no longer fits in the model's context window."""


class EngineError(LlavaLocalError):
    """llama.cpp or ONNX Runtime refused an operation (load, decode) for a reason we could detect."""


class ConversionError(LlavaLocalError):
    """A checkpoint cannot be converted, or the converted bundle failed its parity check."""


class TemplateError(LlavaLocalError):
    """An unknown chat template, or a conversation the template cannot render."""
