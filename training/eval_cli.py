"""`llava-local eval SUITE ...`: accuracy of a bundle on an evaluation suite.

Contract (a `llava_local.commands` entry point): `HELP`, `add_arguments(parser)` and `run(args) -> int`. Each suite is
a module with its own `HELP`, `add_arguments(parser)` and `run(args) -> int`, named in `SUITES`; only the suite being
run is imported (all of them for `llava-local eval --help`). A new benchmark is one module and one row here.
"""

from __future__ import annotations

import argparse
import importlib

HELP = "evaluate a bundle: held-out synthetic scenes, ScienceQA"

# suite name → module (imported when that suite runs).
SUITES: dict[str, str] = {
    "synthetic": "training.demo.eval_cli",
    "scienceqa": "training.scienceqa.eval_cli",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="suite", metavar="SUITE", required=True)
    for name, module in SUITES.items():
        suite = importlib.import_module(module)
        suite.add_arguments(sub.add_parser(name, help=suite.HELP, description=suite.HELP))


def run(args: argparse.Namespace) -> int:
    return int(importlib.import_module(SUITES[args.suite]).run(args) or 0)
