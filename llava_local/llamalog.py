"""Quiet llama.cpp logging.

Contract: `install()` routes llama.cpp's and ggml's log output through one Python callback. By default nothing is
printed (a chat on a terminal must not be buried in load messages); the last error lines are kept so an
`EngineError` can quote them (`recent_errors()`). `LLAVA_LOCAL_DEBUG=1` prints everything to stderr.
"""

from __future__ import annotations

import collections
import ctypes
import os
import sys

DEBUG_ENV = "LLAVA_LOCAL_DEBUG"

# ggml_log_level: 0 NONE, 1 INFO, 2 WARN, 3 ERROR, 4 DEBUG, 5 CONT (continues the previous message).
_ERROR, _CONT = 3, 5
_recent: collections.deque[str] = collections.deque(maxlen=8)
_state = {"installed": False, "last_level": 0}
_callback = None  # keep a reference: ctypes callbacks die with their Python object


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0", "false", "no")


def _on_log(level: int, text: bytes | None, _user: ctypes.c_void_p) -> None:
    msg = (text or b"").decode("utf-8", "replace")
    if level == _CONT:
        level = _state["last_level"]
    _state["last_level"] = level
    if level == _ERROR and msg.strip():
        _recent.append(msg.strip())
    if debug_enabled():
        sys.stderr.write(msg)


def install() -> None:
    """Install the quiet callback (idempotent). Call after `import llama_cpp`, which installs its own."""
    global _callback
    import llama_cpp

    if _state["installed"]:
        return
    _callback = llama_cpp.llama_log_callback(_on_log)
    llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))
    _state["installed"] = True


def recent_errors() -> str:
    """The last llama.cpp error lines, joined on one line (for error messages)."""
    return " | ".join(_recent)


def clear_errors() -> None:
    _recent.clear()
