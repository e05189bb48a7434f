"""`llava-local eval synthetic --n N --seed S [--model M] [--torch CKPT] [--text-llm DIR] [--json]`: held-out accuracy.

Contract (an eval suite of `training.eval_cli`): `HELP`, `add_arguments(parser)` and `run(args) -> int`. Scenes
`0..N-1` of world `S` (the demo model trains on world 0; any other seed is held out) are rendered and asked one
question per type — colour, shape, count, position, relation, existence, description — each in a fresh
conversation through the same engine as `llava-local chat` (greedy). It prints accuracy per type and overall,
or one JSON object with `--json`. `--torch CKPT` also asks a layout-c training checkpoint the same questions
through transformers (needs the [train] extra) and prints both columns; `--text-llm DIR` asks a text-only
LLaMA (the recipe's `base-llm`) with each scene written out where the image goes: what the language model can
do before it sees an image. `--min-accuracy X` makes the exit code 1 when the bundle's overall accuracy is below X
(for CI).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from llava_local.errors import UsageError

HELP = "the demo model's synthetic world: held-out scenes, one question per type"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=300, help="number of scenes (one question per type each)")
    parser.add_argument("--seed", type=int, default=1000, help="world seed of the held-out scenes (not 0)")
    parser.add_argument("--model", default=None, help="bundle path or name (default: the default model)")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda or metal (default cpu: reproducible)")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: llama.cpp's choice)")
    parser.add_argument("--torch", dest="torch_ckpt", default=None, metavar="CKPT",
                        help="also evaluate this layout-c checkpoint with transformers, for comparison")
    parser.add_argument("--text-llm", default=None, metavar="DIR",
                        help="also ask this text-only LLaMA (e.g. build/demo/base-llm), each scene written out")
    parser.add_argument("--phrasing", choices=("teacher", "heldout", "both"), default="teacher",
                        help="the teacher's question templates (what the model trained on, with the short-answer "
                             "instruction), held-out wordings as users type them, or both (default: teacher)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--show-errors", type=int, default=0, metavar="K", help="print K wrong answers per type")
    parser.add_argument("--min-accuracy", type=float, default=None, metavar="X",
                        help="exit with code 1 when the bundle's overall accuracy (on every phrasing asked) is below X")


def _table(columns: dict[str, dict[str, Any]]) -> str:
    names = list(columns)
    first = next(iter(columns.values()))
    lines = [f"{'type':<12}" + "".join(f"{n:>10}" for n in names)]
    for t in first["per_type"]:
        lines.append(f"{t:<12}" + "".join(f"{100 * c['per_type'].get(t, 0):>9.1f}%" for c in columns.values()))
    lines.append(f"{'overall':<12}" + "".join(f"{100 * c['overall']:>9.1f}%" for c in columns.values()))
    lines.append(f"{'questions':<12}" + "".join(f"{c['n_questions']:>10}" for c in columns.values()))
    lines.append(f"{'seconds':<12}" + "".join(f"{c['seconds']:>10.1f}" for c in columns.values()))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.n <= 0:
        raise UsageError(f"--n must be a positive number of scenes, got {args.n}")
    if args.seed == 0:
        raise UsageError("--seed 0 is the demo model's training world; pick another seed for held-out scenes")
    if args.min_accuracy is not None and not 0 <= args.min_accuracy <= 1:
        raise UsageError("--min-accuracy is a fraction in [0, 1], e.g. 0.9")
    if args.torch_ckpt and not (Path(args.torch_ckpt) / "llava_local.json").is_file():
        raise UsageError(f"--torch {args.torch_ckpt}: not a `llava-local train` output (no llava_local.json)")
    if args.text_llm and not (Path(args.text_llm) / "config.json").is_file():
        raise UsageError(f"--text-llm {args.text_llm}: not a language model directory (no config.json)")
    from .evaluate import evaluate_bundle, evaluate_text, evaluate_torch

    def progress(done: int, total: int) -> None:
        if not args.json and sys.stderr.isatty():
            print(f"\r{done}/{total} questions", end="" if done < total else "\n", file=sys.stderr, flush=True)

    phrasings = ("teacher", "heldout") if args.phrasing == "both" else (args.phrasing,)
    results = {}
    for p in phrasings:  # columns: bundle, torch, text; held-out ones suffixed when both splits run
        tag = "" if len(phrasings) == 1 or p == "teacher" else "/heldout"
        results[f"bundle{tag}"] = evaluate_bundle(args.model, args.n, args.seed, device=args.device,
                                                  threads=args.threads, progress=progress, phrasing=p)
        if args.torch_ckpt:
            results[f"torch{tag}"] = evaluate_torch(args.torch_ckpt, args.n, args.seed, progress=progress, phrasing=p)
        if args.text_llm:
            results[f"text{tag}"] = evaluate_text(args.text_llm, args.n, args.seed, progress=progress, phrasing=p)
    summaries = {k: r.summary() for k, r in results.items()}
    if args.json:
        print(json.dumps({"suite": "synthetic", "n": args.n, "seed": args.seed, "phrasing": args.phrasing,
                          **summaries}))
    else:
        print(_table(summaries))
        for name, r in results.items():
            if args.show_errors:
                print(f"\nwrong answers ({name}):")
                shown: dict[str, int] = {}
                for it in r.items:
                    if not it["correct"] and shown.get(it["type"], 0) < args.show_errors:
                        shown[it["type"]] = shown.get(it["type"], 0) + 1
                        q = it["question"].replace("\n", " / ")
                        print(f"  [{it['type']}] {q!r}: expected {it['answer']!r}, got {it['prediction']!r}")
    overall = min(s["overall"] for k, s in summaries.items() if k.startswith("bundle"))
    if args.min_accuracy is not None and overall < args.min_accuracy:
        print(f"llava-local: overall accuracy {overall:.3f} is below --min-accuracy {args.min_accuracy}",
              file=sys.stderr)
        return 1
    return 0
