"""`python -m serve ...`: the same as `llava-local serve ...` (the same exit codes and stream handling)."""

from __future__ import annotations

import argparse

from llava_local.exits import run_main

from . import cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llava-local serve", description=cli.HELP)
    cli.add_arguments(parser)
    return run_main(lambda: cli.run(parser.parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
