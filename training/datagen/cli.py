"""`llava-local data {pretrain,generate,synth,scienceqa,synth-scienceqa}`: the command-line face of the data pipeline.

Contract (a `llava_local.commands` entry point): `HELP`, `add_arguments(parser)` and `run(args) -> int`. User
mistakes raise `DatagenError` (a `LlavaLocalError`), which the top-level CLI prints as one line. Results go
to stdout as one summary line; progress goes to stderr. Heavy modules (PIL, llama_cpp) load lazily.

Examples:
    llava-local data synth --n 10000 --seed 0 -o data/shapes
    llava-local data pretrain --input captions.tsv --image-root images/ -o pretrain.json
    llava-local data generate --input captions.json instances.json --image-root images/ \\
        --backend llama --model teacher.gguf -o instruct.json
    OPENAI_API_KEY=... llava-local data generate --input records.jsonl --backend openai \\
        --base-url https://api.example.com/v1 --model some-model --workers 8 --rps 5 -o instruct.json
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from llava_local.errors import UsageError

from .records import DatagenError

if TYPE_CHECKING:
    from .backends import Backend
    from .records import ImageRecord

HELP = "make visual-instruction data: pretrain captions, generate, synthetic world, ScienceQA"
BACKENDS = ("llama", "openai", "teacher")


def _mix(text: str) -> dict[str, float]:
    out = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        try:
            out[name.strip()] = float(weight)
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad --mix entry {part!r}; write e.g. conversation=2,detail=1") from None
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the pretrain/generate/synth subcommands, and scienceqa/synth-scienceqa (`training.scienceqa.data_cli`)."""
    sub = parser.add_subparsers(dest="data_command", metavar="{pretrain,generate,synth,scienceqa,synth-scienceqa}")

    p = sub.add_parser("pretrain", help="image–caption pairs → stage-1 LLaVA JSON")
    p.add_argument("--input", nargs="+", type=Path, required=True, help="COCO captions .json, or one .tsv/.jsonl")
    p.add_argument("--image-root", type=Path, help="folder the image paths are relative to (default: the input's)")
    p.add_argument("-o", "--output", type=Path, required=True, help="LLaVA JSON to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--all-captions", action="store_true", help="one sample per caption, not one per image")

    g = sub.add_parser("generate", help="captions + boxes → LLM → conversation/detail/complex_reasoning JSON")
    g.add_argument("--input", nargs="+", type=Path, required=True,
                   help="COCO captions and/or instances .json files, or one .jsonl of {image, captions, boxes}")
    g.add_argument("--image-root", type=Path, help="folder the image paths are relative to (default: the input's)")
    g.add_argument("--no-image-check", action="store_true", help="keep records whose image file is missing")
    g.add_argument("-o", "--output", type=Path, required=True, help="LLaVA JSON to write (journal and stats beside it)")
    g.add_argument("--backend", choices=BACKENDS, default="llama", help="llama (local GGUF, default), openai, teacher")
    g.add_argument("--model", help="llama: path to a GGUF; openai: the model name")
    g.add_argument("--base-url", help="openai: endpoint base URL, e.g. http://127.0.0.1:8000/v1")
    g.add_argument("--api-key-env", default="OPENAI_API_KEY", help="openai: env var holding the key (optional)")
    g.add_argument("--mix", type=_mix, default=None,
                   help="response-type weights, e.g. conversation=0.37,detail=0.15,complex_reasoning=0.48")
    g.add_argument("--per-image", type=int, default=1, help="distinct response types per image (default 1)")
    g.add_argument("--limit", type=int, help="only the first N images")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--shots", type=int, default=2, choices=(0, 1, 2), help="few-shot examples per prompt")
    g.add_argument("--workers", type=int, default=4, help="concurrent requests (llama runs one at a time)")
    g.add_argument("--rps", type=float, default=0.0, help="openai: max requests per second (0: unlimited)")
    g.add_argument("--retries", type=int, default=5, help="openai: attempts per request")
    g.add_argument("--backoff", type=float, default=0.5, help="openai: first retry wait in seconds (doubles)")
    g.add_argument("--timeout", type=float, default=120.0, help="openai: seconds per request")
    g.add_argument("--temperature", type=float, default=0.2)
    g.add_argument("--max-tokens", type=int, default=1024)
    g.add_argument("--n-ctx", type=int, default=4096, help="llama: context length")
    g.add_argument("--no-grammar", action="store_true", help="llama: do not constrain output with GBNF")
    g.add_argument("--max-line-chars", type=int, default=300, help="llama: grammar bound on one Q:/A: line")
    g.add_argument("--dedup", choices=("global", "image", "off"), default="global")
    g.add_argument("--no-check", action="store_true", help="do not check answers about synthetic scenes")
    g.add_argument("--restart", action="store_true", help="discard the journal and start over")
    g.add_argument("--quiet", action="store_true", help="no progress on stderr")

    s = sub.add_parser("synth", help="synthetic shape world: images + COCO annotations + checked instruction data")
    s.add_argument("--n", type=int, required=True, help="number of scenes")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    s.add_argument("--size", type=int, default=96, help="image side in pixels (16..1024)")
    s.add_argument("--max-objects", type=int, default=5, help="objects per scene, 1..9")
    s.add_argument("--restart", action="store_true", help="discard the journal and start over")
    s.add_argument("--quiet", action="store_true", help="no progress on stderr")

    from training.scienceqa.data_cli import add_parsers as add_scienceqa_parsers

    add_scienceqa_parsers(sub)  # scienceqa, synth-scienceqa


def _records(args: argparse.Namespace, check: bool) -> tuple[list[ImageRecord], list[str]]:
    from .records import check_images, load_records

    records = load_records(args.input, args.image_root)
    if getattr(args, "limit", None):
        records = records[: args.limit]
    root = args.image_root or args.input[0].parent
    missing: list[str] = []
    if check:
        records, missing = check_images(records, root)
        if missing and not records:
            raise DatagenError(f"none of the images exist under {root} (e.g. {missing[0]}); pass --image-root")
        if missing:
            print(f"llava-local: {len(missing)} records dropped: image missing under {root} (e.g. {missing[0]})",
                  file=sys.stderr)
    return records, missing


def _backend(args: argparse.Namespace) -> Backend:
    from .backends import LlamaCppBackend, OpenAIBackend, TeacherBackend
    from .retry import RateLimiter, RetryPolicy

    if args.backend == "teacher":
        return TeacherBackend()
    if args.backend == "openai":
        if not args.base_url or not args.model:
            raise DatagenError("--backend openai needs --base-url URL and --model NAME")
        if args.retries < 1:
            raise UsageError("--retries must be >= 1")
        return OpenAIBackend(args.base_url, args.model, os.environ.get(args.api_key_env),
                             temperature=args.temperature, max_tokens=args.max_tokens, timeout=args.timeout,
                             policy=RetryPolicy(attempts=args.retries, base=args.backoff),
                             limiter=RateLimiter(args.rps or None))
    if not args.model:
        raise DatagenError("--backend llama needs --model PATH.gguf (or use --backend openai/teacher)")
    return LlamaCppBackend(Path(args.model), n_ctx=args.n_ctx, temperature=args.temperature,
                           max_tokens=args.max_tokens, grammar=not args.no_grammar,
                           line_chars=args.max_line_chars, seed=args.seed)


def _generate(args: argparse.Namespace) -> int:
    from .pipeline import Settings
    from .pipeline import run as run_pipeline

    if args.workers < 1:
        raise UsageError("--workers must be >= 1")
    settings = Settings(mix=args.mix or Settings().mix, per_image=args.per_image, seed=args.seed,
                        shots=args.shots, dedup=args.dedup, check_scenes=not args.no_check)
    records, missing = _records(args, check=not args.no_image_check)
    backend = _backend(args)
    try:
        stats = run_pipeline(records, backend, settings, args.output, workers=args.workers, restart=args.restart,
                             progress=not args.quiet, extra_stats={"missing_images": len(missing)})
    finally:
        backend.close()
    rejected = sum(stats["rejected"].values())
    by_type = ", ".join(f"{t} {n}" for t, n in stats["by_type"].items())
    reasons = ", ".join(f"{r} {n}" for r, n in stats["rejected"].items())
    print(f"wrote {stats['accepted']} samples to {args.output} ({by_type}); rejected {rejected}"
          + (f" ({reasons})" if reasons else "") + f"; {len(missing)} images missing")
    if stats["unfinished"]:
        raise DatagenError(f"{stats['unfinished']} jobs failed after retries; run the same command again to retry "
                           "them (finished work is kept)")
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from .pipeline import write_json
    from .pretrain import make_pretrain
    from .records import load_records

    records = load_records(args.input, args.image_root)
    samples, stats = make_pretrain(records, args.image_root or args.input[0].parent, args.seed, args.all_captions)
    write_json(args.output, samples)
    missing = f"; {stats['missing_images']} images missing (e.g. {stats['missing_examples'][0]})" \
        if stats["missing_images"] else ""
    print(f"wrote {stats['samples']} samples to {args.output} from {stats['records']} records{missing}")
    return 0


def _synth(args: argparse.Namespace) -> int:
    from .synth import synthesize
    from .world import WorldConfig

    if args.n < 1:
        raise UsageError("--n must be >= 1")
    if not 16 <= args.size <= 1024:
        raise UsageError("--size must be 16..1024 pixels")
    if not 1 <= args.max_objects <= 9:
        raise UsageError("--max-objects must be 1..9")
    world = WorldConfig(max_objects=args.max_objects)
    stats = synthesize(args.n, args.seed, args.output, size=args.size, world=world, restart=args.restart,
                       progress=not args.quiet)
    print(f"wrote {stats['scenes']} scenes, {stats['accepted']} instruction samples, {stats['pretrain_samples']} "
          f"pretrain samples, {stats['questions']} questions to {args.output} in {stats['total_seconds']:.1f}s")
    return 0


def run(args: argparse.Namespace) -> int:
    """Dispatch `llava-local data <command>`."""
    from training.scienceqa.data_cli import COMMANDS as SCIENCEQA_COMMANDS

    commands = {"pretrain": _pretrain, "generate": _generate, "synth": _synth, **SCIENCEQA_COMMANDS}
    if args.data_command not in commands:
        raise UsageError(f"say what to make: llava-local data {{{','.join(commands)}}} --help")
    return commands[args.data_command](args)
