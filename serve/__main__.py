"""`python -m serve ...`: the same as `llava-local serve ...`."""

from __future__ import annotations

import argparse
import sys

from llava_local.errors import LlavaLocalError

from . import cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llava-local serve", description=cli.HELP)
    cli.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return cli.run(args)
    except LlavaLocalError as e:
        print(f"llava-local: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
