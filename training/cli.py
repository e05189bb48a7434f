"""`llava-local train CONFIG [key=value ...] [--dry-run] [--resume]`: LLaVA stage 1 / stage 2 training.

Contract (a `llava_local.commands` entry point): `HELP`, `EXTRA`, `add_arguments(parser)` and `run(args) -> int`.
CONFIG is a YAML path or a preset name from `training/configs` (tiny-stage1, llava-1.5-stage2, ...). Overrides use
dotted keys: `optim.lr=1e-4 data.json=/data/llava_v1_5_mix665k.json train.out_dir=runs/s2`. Under torchrun the same
command runs FSDP2 over all processes (`torchrun --nproc-per-node 8 -m llava_local.cli train ...`).
Configuration mistakes raise `UsageError` (one line on stderr, exit 2).
"""

from __future__ import annotations

import argparse

HELP = "train LLaVA stage 1 / stage 2 from a YAML config (needs the [train] extra)"
EXTRA = "train"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config file or preset name (see training/configs)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="override config values with dotted keys, e.g. optim.lr=2e-5 train.out_dir=runs/x")
    parser.add_argument("--dry-run", action="store_true",
                        help="print trainable parameters and a memory estimate, then exit without training")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest checkpoint in train.out_dir/checkpoints")


def run(args: argparse.Namespace) -> int:
    import logging
    import os

    from .config import load_config

    cfg = load_config(args.config, list(args.overrides))
    if args.dry_run:
        from .dryrun import dry_run_report

        print(dry_run_report(cfg, world=int(os.environ.get("WORLD_SIZE", "1"))))
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from transformers.utils import logging as hf_logging

    # Our own status line reports progress; transformers' per-load bars and notices only add noise.
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    from .trainer import run_training

    run_training(cfg, resume=args.resume)
    return 0
