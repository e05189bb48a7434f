"""`llava-local` command line: a thin dispatcher over the commands that installed packages register.

Contract: `main(argv) -> int`. Subcommands are entry points in the group `llava_local.commands` (see
`llava_local.plugins`): the runtime ships `chat` and `info`; `converters`, `training`, `tui`, `serve` register theirs
in their own `pyproject` entries, so this module names none of them. A command module exposes `HELP` (one line),
`add_arguments(parser)` and `run(args) -> int`. Only the command being run is imported (all of them for the
top-level help), and command modules keep torch & co. inside `run`, so `llava-local --help` stays light.

User mistakes (`LlavaLocalError`) print one line on stderr and return their exit code; a command whose optional
dependencies are missing says which extra to install; nothing a user can type produces a traceback. Exit codes,
signals (Ctrl-C 130, SIGTERM 143) and a closed or full stdout are handled around every command by
`llava_local.exits.run_main`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__
from .errors import LlavaLocalError
from .exits import run_main
from .plugins import Plugin, import_module_of, load_plugin, missing_extras, module_extras, plugins

COMMAND_GROUP = "llava_local.commands"


def _help_of(plugin: Plugin) -> str:
    """The command's one-line help, followed by what to install when its extra is missing."""
    try:
        module = import_module_of(plugin)
    except LlavaLocalError as e:
        return f"(unavailable: {e})"
    lacking = missing_extras(plugin, module)
    needs = "".join(f" (unavailable: pip install '{plugin.dist}[{extra}]')" for extra in lacking)
    return str(getattr(module, "HELP", "")) + needs


def build_parser(command: str | None = None, module: Any = None,
                 commands: dict[str, Plugin] | None = None) -> argparse.ArgumentParser:
    """The top-level parser. With `command`, only that command's module is imported (`module` when the caller
    has loaded it already) to add its arguments; without one, every command's module is imported for its help."""
    parser = argparse.ArgumentParser(prog="llava-local", description="LLaVA on your own machine, offline.")
    parser.add_argument("--version", action="version", version=f"llava-local {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, plugin in (plugins(COMMAND_GROUP) if commands is None else commands).items():
        if command is None:
            help_text = _help_of(plugin)
            sub.add_parser(name, help=help_text, description=help_text)
        elif name == command:
            module = module if module is not None else load_plugin(plugin)
            help_text = str(getattr(module, "HELP", ""))
            module.add_arguments(sub.add_parser(name, help=help_text, description=help_text))
        else:
            sub.add_parser(name)  # listed so argparse accepts it; never shown (help is printed only without a command)
    return parser


def _command_of(argv: Sequence[str], known: Sequence[str]) -> str | None:
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in known else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_main(lambda: _run(argv))


def _run(argv: list[str]) -> int:
    commands = plugins(COMMAND_GROUP)  # entry points are scanned once, the command's module loaded once
    command = _command_of(argv, list(commands))
    command_module = load_plugin(commands[command]) if command is not None else None
    parser = build_parser(command, command_module, commands)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    plugin = commands[args.command]
    command_module = command_module if command_module is not None else load_plugin(plugin)
    with plugin.missing_extra_errors(module_extras(command_module)):
        return int(command_module.run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
