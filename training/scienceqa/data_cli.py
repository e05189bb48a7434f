"""`llava-local data scienceqa ...` and `llava-local data synth-scienceqa ...`: the data face of ScienceQA.

Contract: `add_parsers(sub)` adds both subcommands to `llava-local data`'s subparsers; `COMMANDS` maps their
names to `run(args) -> int` functions (`training.datagen.cli` dispatches through it). User mistakes raise
`ScienceQAError` (one line). The summary goes to stdout.

    llava-local data scienceqa --base-dir ScienceQA/data/scienceqa --split train -o sqa-train.json
        (the paper's training format QCM-LEA; image paths relative to images/train)
    llava-local data scienceqa --base-dir ... --split test --prompt-format CQM-A -o sqa-test.json
    llava-local data synth-scienceqa --n 300 --seed 1 -o data/synth-scienceqa
"""

from __future__ import annotations

import argparse
from pathlib import Path

TRAIN_SPLITS = ("train", "minitrain")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from .prompts import EVAL_FORMAT, TRAIN_FORMAT

    q = sub.add_parser("scienceqa", help="the ScienceQA release → LLaVA training/eval JSON (QCM-LEA, CQM-A, ...)")
    q.add_argument("--base-dir", type=Path, required=True,
                   help="the release folder: problems.json, pid_splits.json, images/<split>/<pid>/image.png")
    q.add_argument("--split", required=True, help="train, val, minival, test, minitest (or minitrain)")
    q.add_argument("--prompt-format", default=None, metavar="FMT",
                   help=f"INPUT-OUTPUT, e.g. QCM-LEA, QCM-LEPA, CQM-A (default: {TRAIN_FORMAT} for training "
                        f"splits, {EVAL_FORMAT} otherwise)")
    q.add_argument("-o", "--output", type=Path, required=True, help="LLaVA JSON to write")
    q.add_argument("--no-image-check", action="store_true", help="do not check that image files exist")

    s = sub.add_parser("synth-scienceqa",
                       help="a small ScienceQA-format release from the synthetic shapes world (format demo)")
    s.add_argument("--n", type=int, required=True, help="number of problems (>= 5)")
    s.add_argument("--seed", type=int, default=1, help="world seed (default 1; the demo model trained on 0)")
    s.add_argument("--size", type=int, default=96, help="image side in pixels (16..1024)")
    s.add_argument("-o", "--output", type=Path, required=True, help="release folder to write")


def _scienceqa(args: argparse.Namespace) -> int:
    from .convert import image_root, to_records, write
    from .prompts import EVAL_FORMAT, TRAIN_FORMAT, parse_format
    from .release import load_release

    if args.split == "trainval":
        from .release import ScienceQAError

        # one JSON holds one image root, and train's and val's images live under images/train and images/val
        raise ScienceQAError("--split trainval: convert train and val separately (their images live in different "
                             "folders) and list both files in the training config")
    fmt = args.prompt_format or (TRAIN_FORMAT if args.split in TRAIN_SPLITS else EVAL_FORMAT)
    parse_format(fmt)
    release = load_release(args.base_dir)
    records = to_records(release, args.split, fmt, check_images=not args.no_image_check)
    write(records, args.output)
    n_img = sum(1 for r in records if "image" in r)
    print(f"wrote {len(records)} {args.split} samples ({n_img} with an image, {len(records) - n_img} text-only) "
          f"in format {fmt} to {args.output}; image root {image_root(args.base_dir, args.split)}")
    return 0


def _synth(args: argparse.Namespace) -> int:
    from .release import ScienceQAError
    from .synth import synthesize

    if args.n < 5:
        raise ScienceQAError("--n must be >= 5 (train, val and test each get problems)")
    if not 16 <= args.size <= 1024:
        raise ScienceQAError("--size must be 16..1024 pixels")
    st = synthesize(args.output, args.n, args.seed, args.size)
    print(f"wrote {st['problems']} problems ({st['with_image']} with an image; train {st['train']}, val "
          f"{st['val']}, test {st['test']}) to {args.output}: a format demonstration, not a science benchmark")
    return 0


COMMANDS = {"scienceqa": _scienceqa, "synth-scienceqa": _synth}
