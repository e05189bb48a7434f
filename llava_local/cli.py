"""`llava-local` command line: a thin layer over the runtime, converters, training and TUI.

Contract: `main(argv) -> int`. User mistakes (`LlavaLocalError`) print one line on stderr and return a
non-zero code; nothing a user can type produces a traceback. Commands whose code needs torch or textual
live in other packages and are imported only when that command runs, so `import llava_local.cli` (and
`llava-local --help`) stays light and torch-free.

A command module exposes `add_arguments(parser)` and `run(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from . import __version__
from .errors import LlavaLocalError

# name → (module, one-line help). Modules are imported only when their command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "chat": ("llava_local.commands.chat", "chat about images: the terminal app, or one answer with --prompt"),
    "info": ("llava_local.commands.info", "show a bundle's manifest, files and parity report"),
    "convert": ("converters.cli", "convert a LLaVA checkpoint into a bundle (needs the [convert] extra)"),
    "train": ("training.cli", "train LLaVA stage 1 / stage 2 from a YAML config (needs the [train] extra)"),
    "data": ("training.datagen.cli", "make visual-instruction data: pretrain captions, generate, synthetic world"),
    "eval": ("training.eval_cli", "evaluate a bundle on held-out synthetic scenes"),
}


def _load(module: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        missing = (e.name or "").split(".")[0]
        if missing in {"torch", "transformers", "onnx", "gguf", "sentencepiece", "safetensors", "yaml", "peft"}:
            raise LlavaLocalError(
                f"this command needs {missing}: install the extras with `pip install 'llava-local[convert,train]'`"
            ) from None
        if e.name and module.startswith(e.name):
            raise LlavaLocalError(f"this installation has no {module.split('.')[0]} package for this command") from None
        raise


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; only `command`'s module is imported to add its arguments."""
    parser = argparse.ArgumentParser(
        prog="llava-local", description="LLaVA on your own machine, offline.",
    )
    parser.add_argument("--version", action="version", version=f"llava-local {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            _load(module).add_arguments(p)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command_of(argv)
    try:
        parser = build_parser(command)
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        return int(_load(COMMANDS[args.command][0]).run(args) or 0)
    except LlavaLocalError as e:
        print(f"llava-local: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("llava-local: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `llava-local chat ... | head`: the reader went away; exit quietly like other Unix tools.
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
