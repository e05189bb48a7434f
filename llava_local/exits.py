"""Exit codes and the process's edges: signals, and standard streams that are closed, full or gone.

Contract: `run_main(body) -> int` runs a command body (a callable returning the exit code) and maps every way it can
end onto one line on stderr and an exit code:

| how it ends                                     | code | stderr                                   |
|-------------------------------------------------|------|------------------------------------------|
| normally                                        | body's (0) |                                    |
| `LlavaLocalError` (a user mistake, a bad file)  | 1, `UsageError` 2 | `llava-local: error: ...`       |
| Ctrl-C (SIGINT → KeyboardInterrupt)             | 130  | `llava-local: interrupted`               |
| SIGTERM (raised as `Terminated`)                | 143  | `llava-local: terminated`                |
| stdout closed, full (`> /dev/full`), I/O error  | 1    | `llava-local: error: cannot write ...`   |
| stdout's reader went away (`| head`)            | 0    | nothing, like other Unix tools           |

SIGTERM becomes an exception (a `BaseException`, like KeyboardInterrupt, so `except Exception` does not swallow it)
so that `finally` blocks and `except BaseException: cleanup; raise` run: convert removes its work directory, the
model closes. The terminal app installs its own SIGINT/SIGTERM handlers on its event loop (`tui.app`) and returns
the same codes. Standard file descriptors that were closed at start are reopened on /dev/null, so no file the
command opens later can take fd 0-2 and receive stray output from C code; `sys.stdout` stays "closed" for us.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from .errors import LlavaLocalError

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143


class Terminated(BaseException):
    """SIGTERM arrived; raised in the main thread so cleanups run before the process exits with 143."""


class OutputError(LlavaLocalError):
    """Standard output cannot be written (closed, disk full, I/O error)."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated


class _GuardedOutput:
    """sys.stdout with write errors turned into OutputError (BrokenPipeError is kept: it means "stop quietly").

    Everything else (isatty, fileno, encoding, buffer) is the real stream's."""

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream

    @property
    def is_closed_at_start(self) -> bool:
        return self._stream is None

    def _fail(self, e: OSError | None) -> OutputError:
        why = "it is closed" if e is None else (e.strerror or str(e))
        return OutputError(f"cannot write to standard output: {why}")

    def write(self, text: str) -> int:
        if self._stream is None:
            raise self._fail(None)
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise
        except OSError as e:
            raise self._fail(e) from None

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        flush = getattr(self._stream, "flush", None)  # None: closed at start (or a minimal stand-in in a test)
        if flush is None:
            return
        try:
            flush()
        except BrokenPipeError:
            raise
        except OSError as e:
            raise self._fail(e) from None

    def isatty(self) -> bool:
        try:
            return self._stream is not None and self._stream.isatty()
        except (OSError, ValueError):
            return False

    def __getattr__(self, name: str) -> Any:
        if self._stream is None:
            raise AttributeError(name)
        return getattr(self._stream, name)


def stdout_closed() -> bool:
    """True when the process started with fd 1 closed (`cmd >&-`): there is nowhere to print an answer."""
    out = sys.stdout
    return out is None or bool(getattr(out, "is_closed_at_start", False))


def _reserve_std_fds() -> None:
    """Reopen closed fds 0-2 on /dev/null: otherwise the next open() gets fd 1 or 2 and C code printing to
    stdout/stderr (llama.cpp, onnxruntime) writes into that file, a database or a model."""
    for fd, mode in ((0, os.O_RDONLY), (1, os.O_WRONLY), (2, os.O_WRONLY)):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, mode)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def _stdout_to_devnull(stream: TextIO | None) -> None:
    """After EPIPE/ENOSPC the text buffer still holds output that the interpreter flushes at exit; let it go.
    Only the failed stream's own descriptor is redirected (an in-memory stand-in has none)."""
    try:
        fd = stream.fileno() if stream is not None else -1
    except (OSError, ValueError):  # io.UnsupportedOperation is both
        return
    if fd < 0:
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, fd)
    except OSError:
        pass
    finally:
        os.close(null)


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _say(message: str) -> None:
    err = sys.stderr
    if err is None:
        return
    try:
        print(message, file=err, flush=True)
    except (OSError, ValueError):
        pass


def run_main(body: Callable[[], int | None]) -> int:
    """Run `body()` with the edges above handled; returns the process exit code."""
    _reserve_std_fds()
    saved_out, saved_err = sys.stdout, sys.stderr
    null_err = None
    if sys.stderr is None:  # print(file=None) would go to stdout
        null_err = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - closed below
    sys.stdout = _GuardedOutput(saved_out)  # type: ignore[assignment]
    try:
        with _sigterm_raises():
            try:
                code = int(body() or 0)
                sys.stdout.flush()
                return code
            except OutputError as e:
                _stdout_to_devnull(saved_out)
                _say(f"llava-local: error: {e}")
                return e.exit_code
            except LlavaLocalError as e:
                _say(f"llava-local: error: {e}")
                return e.exit_code
            except KeyboardInterrupt:
                _say("llava-local: interrupted")
                return EXIT_INTERRUPTED
            except Terminated:
                _say("llava-local: terminated")
                return EXIT_TERMINATED
            except BrokenPipeError:
                # `llava-local chat ... | head`: the reader went away; exit quietly like other Unix tools.
                _stdout_to_devnull(saved_out)
                return EXIT_OK
            except SystemExit as e:  # argparse: --help, --version, a usage error; its output must reach stdout too
                try:
                    sys.stdout.flush()
                except OutputError as out:
                    _stdout_to_devnull(saved_out)
                    _say(f"llava-local: error: {out}")
                    return out.exit_code
                except BrokenPipeError:
                    _stdout_to_devnull(saved_out)
                raise e
    finally:
        sys.stdout, sys.stderr = saved_out, saved_err
        if null_err is not None:
            null_err.close()

