"""Textual terminal app behind `llava-local chat`.

Contract: `launch(args) -> int` runs the app for the `chat` command's parsed arguments (`images`, `model`,
`device`, `quant`, `n_ctx`, `session`, `system` and the sampling flags) and returns the exit code. Textual
is imported only here, inside the function, so `import tui` stays cheap and `llava_local` never pulls it in.
"""

from __future__ import annotations

import argparse
import logging
import sqlite3

import llava_local  # noqa: F401  (first: it turns onnxruntime's telemetry off before onnxruntime loads)


def launch(args: argparse.Namespace) -> int:
    """Open the chat app; returns 0 when the user quits, 130/143 after SIGINT/SIGTERM, 1 if it crashed."""
    # textual-image asks the terminal about graphics support and cell size when first imported; that must happen
    # before Textual owns stdin, or the terminal's reply ("ESC[?1;2c") is read as typed keys. A terminal that does
    # not answer the cell-size query makes it log a warning with a full traceback (Python's last-resort handler
    # prints it on the screen the user returns to); its fallback size is fine, so only errors are shown.
    logging.getLogger("textual_image").setLevel(logging.ERROR)
    try:
        import textual_image.widget  # noqa: F401

        preview = "auto"
    except Exception:  # e.g. a terminal that reports 0 columns: show image chips without previews
        preview = "none"

    from llava_local.commands.chat import generation_from_args, runtime_from_args
    from llava_local.errors import LlavaLocalError
    from llava_local.paths import data_dir

    from .app import LlavaApp
    from .backend import llava_backend
    from .store import Store

    runtime = runtime_from_args(args)
    gen = generation_from_args(args)
    try:
        store = Store(data_dir())
    except (OSError, sqlite3.Error) as e:
        raise LlavaLocalError(f"cannot open the sessions database in {data_dir()}: {e}; "
                              "check its permissions or set LLAVA_LOCAL_HOME") from None
    try:
        app = LlavaApp(llava_backend(runtime), store, model=getattr(args, "model", None),
                       images=list(getattr(args, "images", None) or []), generation=gen,
                       system=getattr(args, "system", None), resume=getattr(args, "session", None), preview=preview)
        code = app.run()
    finally:
        store.close()
    if code is None and app.return_code:  # Textual printed a crash's traceback: not a success
        return int(app.return_code)
    return int(code or 0)
