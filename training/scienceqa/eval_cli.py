"""`llava-local eval scienceqa BUNDLE --base-dir DIR [--split test] [--limit N] [-o PRED.jsonl] [--judge ...]`.

Contract (an eval suite of `training.eval_cli`): `HELP`, `add_arguments(parser)` and `run(args) -> int`. Asks
every question of the split through the runtime (greedy, single-prediction prompt; `evaluate`), resuming from
the predictions JSONL, with progress on stderr; then prints the bundle (manifest hash, quant) and the paper's
table (NAT SOC LAN TXT IMG NO G1-6 G7-12 Avg; `score`) for LLaVA and, with `--judge`, the judge alone and the
two ensembles (`judge`), plus counts of unreadable answers; `--json` prints one JSON object instead. The judge is
a text-only LLM through the backends of `llava-local data generate`: `--judge llama --judge-model FILE.gguf`
(local) or `--judge openai --judge-model NAME --judge-base-url URL` (key from `--judge-api-key-env`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from llava_local.errors import UsageError

HELP = "ScienceQA (the LLaVA paper's second use case): the paper's table, optionally with a text-only judge"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", metavar="BUNDLE", help="bundle path or name")
    parser.add_argument("--base-dir", required=True, type=Path,
                        help="the ScienceQA release folder (problems.json, pid_splits.json, images/)")
    parser.add_argument("--split", default="test", help="test (default), val, minitest, minival, ...")
    parser.add_argument("--limit", type=int, default=None, help="only the first N questions of the split")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="predictions JSONL, resumed if it exists (default scienceqa-SPLIT-BUNDLE.jsonl)")
    parser.add_argument("--restart", action="store_true", help="discard the predictions file and start over")
    parser.add_argument("--fallback", choices=("random", "wrong"), default="random",
                        help="an answer naming no valid choice: a seeded random choice (the paper's scorer, "
                             "default) or wrong (LLaVA-1.5's scorer)")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda or metal (default cpu)")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads")
    parser.add_argument("--quant", default=None, help="which GGUF of the bundle (default: the manifest's)")
    parser.add_argument("--max-tokens", type=int, default=128, help="answer length limit (default 128)")
    parser.add_argument("--prompt-format", default="CQM-A", metavar="FMT",
                        help="the question's layout: the input part of a format (default CQM-A, LLaVA-1.5's; QCM-LEA "
                             "asks as the paper's fine-tuning data did)")
    parser.add_argument("--no-instruction", action="store_true",
                        help="leave out \"Answer with the option's letter ...\" (for a model fine-tuned to explain, "
                             "then say \"The answer is X.\")")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    j = parser.add_argument_group("judge (the paper's text-only GPT-4 ensemble, with any LLM)")
    j.add_argument("--judge", choices=("llama", "openai"), default=None,
                   help="llama: a local GGUF; openai: an OpenAI-compatible endpoint")
    j.add_argument("--judge-model", default=None, help="llama: path to a GGUF; openai: the model name")
    j.add_argument("--judge-base-url", default=None, help="openai: endpoint base URL, e.g. http://127.0.0.1:8000/v1")
    j.add_argument("--judge-api-key-env", default="OPENAI_API_KEY", help="openai: env var holding the key")
    j.add_argument("--judge-retries", type=int, default=5, help="openai: attempts per request")
    j.add_argument("--judge-backoff", type=float, default=0.5, help="openai: first retry wait in seconds (doubles)")
    j.add_argument("--judge-timeout", type=float, default=120.0, help="openai: seconds per request")
    j.add_argument("--judge-max-tokens", type=int, default=512)
    j.add_argument("--judge-n-ctx", type=int, default=4096, help="llama: context length")


def _judge(args: argparse.Namespace):
    from training.datagen.backends import LlamaCppBackend, OpenAIBackend
    from training.datagen.retry import RetryPolicy

    from .judge import Judge

    if not args.judge_model:
        raise UsageError(f"--judge {args.judge} needs --judge-model")
    if args.judge == "openai":
        if not args.judge_base_url:
            raise UsageError("--judge openai needs --judge-base-url URL")
        if args.judge_retries < 1:
            raise UsageError("--judge-retries must be >= 1")

        def tell(e: Exception) -> None:
            if not args.quiet:
                print(f"\njudge: {e}; retrying", file=sys.stderr, flush=True)

        backend = OpenAIBackend(args.judge_base_url, args.judge_model, os.environ.get(args.judge_api_key_env),
                                temperature=0.0, max_tokens=args.judge_max_tokens, timeout=args.judge_timeout,
                                policy=RetryPolicy(attempts=args.judge_retries, base=args.judge_backoff),
                                on_retry=tell)
    else:
        backend = LlamaCppBackend(Path(args.judge_model), n_ctx=args.judge_n_ctx, temperature=0.0,
                                  max_tokens=args.judge_max_tokens, grammar=False)
    return Judge(backend), backend.identity, backend


def run(args: argparse.Namespace) -> int:
    from . import evaluate
    from .judge import judge_counts
    from .release import load_release
    from .score import accuracy, table

    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be a positive number of questions")
    if args.max_tokens < 1:
        raise UsageError("--max-tokens must be >= 1")
    from .prompts import SINGLE_PRED_PROMPT, parse_format

    parse_format(args.prompt_format)
    release = load_release(args.base_dir)
    release.problems_of(args.split)  # an unknown split fails before a model loads
    out = args.output or Path(f"scienceqa-{args.split}-{Path(str(args.bundle)).name}.jsonl")
    judge, judge_id, backend = _judge(args) if args.judge else (None, None, None)
    tty = sys.stderr.isatty()

    def progress(done: int, total: int, note: str) -> None:
        if args.quiet or (not tty and done < total and done % max(1, total // 10)):
            return  # a log file gets about ten lines, a terminal one line redrawn
        print(f"\r{done}/{total} questions ({note})" if tty else f"{done}/{total} questions ({note})",
              end="" if tty and done < total else "\n", file=sys.stderr, flush=True)

    try:
        problems, meta, records = evaluate.run(
            release, args.split, args.bundle, out, limit=args.limit, judge=judge, judge_id=judge_id,
            device=args.device, threads=args.threads, quant=args.quant, max_tokens=args.max_tokens,
            restart=args.restart, fmt=args.prompt_format,
            instruction=None if args.no_instruction else SINGLE_PRED_PROMPT, progress=progress)
    finally:
        if backend is not None:
            backend.close()
    rows = evaluate.scores(problems, records, args.fallback)
    unread = _unreadable(problems, records)
    errors = sum(1 for p in problems if "error" in records.get(p.pid, {}))
    jc = judge_counts(problems, records)
    if args.json:
        print(json.dumps({"suite": "scienceqa", "split": args.split, "questions": len(problems),
                          "bundle": meta.get("bundle"), "manifest_sha256": meta.get("manifest_sha256"),
                          "quant": meta.get("quant"), "predictions": str(out), "fallback": args.fallback,
                          "accuracy": {k: accuracy(t) for k, t in rows.items()},
                          "counts": {k: t for k, t in rows.items()}, "unreadable": unread,
                          "context_overflows": errors, "judge": jc if jc["asked"] else None}))
        return 0
    print(f"bundle {meta.get('bundle')}  quant {meta.get('quant')}  manifest sha256 "
          f"{str(meta.get('manifest_sha256'))[:16]}  split {args.split}  predictions {out}")
    print(table(rows))
    print(f"unreadable answers (scored by --fallback {args.fallback}): LLaVA {unread}"
          + (f", judge {jc['first_unreadable']}" if jc["asked"] else "")
          + (f"; {errors} questions did not fit the context" if errors else ""))
    if jc["asked"]:
        print(f"judge: asked {jc['asked']}, second rounds (answers differed) {jc['second_rounds']}, second answers "
              f"unreadable {jc['second_unreadable']} (took LLaVA's)")
    return 0


def _unreadable(problems, records) -> int:
    from .extract import choice_index, readable

    n = 0
    for p in problems:
        rec = records.get(p.pid)
        if rec is not None:
            n += int(not readable(choice_index(rec["text"], len(p.choices), "wrong", p.pid)[1]))
    return n
