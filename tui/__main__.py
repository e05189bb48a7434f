"""`python -m tui [IMAGE…] [--model …]`: the chat app without going through `llava-local chat` (same flags)."""

from __future__ import annotations

import argparse
import sys

from llava_local.commands.chat import add_chat_arguments
from llava_local.errors import LlavaLocalError

from . import launch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tui", description="llava-local's terminal chat app")
    add_chat_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return launch(args)
    except LlavaLocalError as e:
        print(f"llava-local: error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
