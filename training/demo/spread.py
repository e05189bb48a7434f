"""The demo recipe's spread across vision-tower seeds: `python -m training.demo.spread` (`make demo-model-spread`).

Contract:
- `run_spread(seeds, work, rerun)` runs the whole recipe (`recipe.Recipe`, from nothing, every stage through eval)
  once per clip seed, each in `work/clip-seed-N/` with its bundle in `work/clip-seed-N/bundle`; a seed whose run
  finished before (its `recipe-report.json` has an eval) is read, not run again. With `rerun=N`, seed N runs a second
  time in `work/clip-seed-N-rerun/` and every file of the two bundles and of their checkpoints after stage 2 is
  compared by SHA-256 (in JSON files, the work dir's own name aside): the recipe is byte-reproducible on one machine
  when they all agree.
- `summarize(reports)` → per phrasing split (teacher, held-out) and per question type: each seed's accuracy, their
  mean and range; and each run's wall time. `markdown(summary)` renders it as the tables in docs/demo-model.md.
  `work/spread.json` gets the summary.
- With `records=DIR` (`make demo-model-spread` passes `docs/demo-model-runs`), each finished run also leaves a record
  in DIR, `clip-seed-N.json`: its report and its files' digests. A seed with no finished work dir but a record made
  with the same recipe config is read from the record, and a rerun whose first run's work dir is gone is compared
  with the record's digests. A whole run takes hours and a work dir does not outlive its machine, so the records,
  kept in git, are how a spread is put together from runs made on different days (and a rerun checked across
  machines). `record_run(records, run, bundle)` (`--record RUN`) records a run made outside the spread: `make
  demo-model` records its own, the shipped bundle's, as the run of the recipe's clip seed.

Only the clip seed varies: it sets the tower's initialisation and batch order, the one stage whose outcome varied
between runs; the world, the data and the LLaVA stages keep their seeds, so the spread is the tower's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import statistics
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from llava_local.errors import LlavaLocalError, UsageError

from .recipe import Recipe
from .recipe_config import RECIPE_YAML, SECOND_PASS, RecipeConfig, load_recipe

SPLITS = {"teacher": "bundle", "heldout": "bundle/heldout"}  # split → the eval stage's key for the bundle's result


def _report(work: Path) -> dict[str, Any] | None:
    path = work / "recipe-report.json"
    if not path.is_file():
        return None
    report = json.loads(path.read_text(encoding="utf-8"))
    return report if "bundle/heldout" in report.get("stages", {}).get("eval", {}) else None


def _config(seed: int, config: str | Path) -> RecipeConfig:
    cfg = load_recipe(config)
    return replace(cfg, clip=replace(cfg.clip, seed=seed))


def record_path(records: Path, seed: int) -> Path:
    return records / f"clip-seed-{seed}.json"


def _same_config(report: dict[str, Any], seed: int, config: str | Path) -> bool:
    """Was this report's run made with `config` and clip seed `seed`? The config is compared as the recipe wrote it
    into its report (JSON, `default=str`), so tuples and the like compare equal."""
    return report.get("config") == json.loads(json.dumps(asdict(_config(seed, config)), default=str))


def read_record(records: Path | None, seed: int, config: str | Path = RECIPE_YAML) -> dict[str, Any] | None:
    """The record of seed `seed`'s finished run, if there is one made with this very recipe config (a changed recipe
    leaves its old records unread)."""
    if records is None or not (path := record_path(records, seed)).is_file():
        return None
    rec = json.loads(path.read_text(encoding="utf-8"))
    return rec if _same_config(rec.get("report", {}), seed, config) else None


def write_record(records: Path, seed: int, run: Path, report: dict[str, Any], bundle: Path | None = None) -> Path:
    path = record_path(records, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    rec = {"clip_seed": seed, "report": report, "digests": digests(run, bundle)}
    path.write_text(json.dumps(rec, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return path


def record_run(records: Path, run: Path, bundle: Path | None = None, config: str | Path = RECIPE_YAML) -> Path:
    """Record a finished recipe run made outside the spread: `make demo-model`'s run, whose bundle is the shipped one
    (`bundle`, else `run/bundle`), is the spread's run of the recipe's own clip seed."""
    if (report := _report(run)) is None:
        raise UsageError(f"{run} holds no finished recipe run (no recipe-report.json with both evals)")
    seed = int(report.get("config", {}).get("clip", {}).get("seed", -1))
    if not _same_config(report, seed, config):
        raise UsageError(f"{run} was made with another recipe config than {config}")
    bundle = bundle or run / "bundle"
    if not (bundle / "manifest.json").is_file():
        raise UsageError(f"{bundle} is not a bundle (no manifest.json)")
    return write_record(records, seed, run, report, bundle)


def run_one(seed: int, work: Path, config: str | Path = RECIPE_YAML, records: Path | None = None) -> dict[str, Any]:
    """The recipe from nothing with clip seed `seed` in `work`, or its finished report (from `work`, else from its
    record); a run finished in `work` is recorded in `records`. A finished run of another config in `work` is an
    error, not a result."""
    if (done := _report(work)) is not None and not _same_config(done, seed, config):
        raise UsageError(f"{work} holds a finished run of another recipe config or clip seed; move it away (or rm -rf "
                         "it) to run this one")
    if done is None:
        if (rec := read_record(records, seed, config)) is not None:
            return rec["report"]
        done = Recipe(_config(seed, config), work, work / "bundle", {}).run()
    if records is not None:
        write_record(records, seed, work, done)
    return done


def digests(run: Path, bundle: Path | None = None) -> dict[str, str]:
    """SHA-256 of every file of a run's bundle (`bundle`, else `run/bundle`; named `bundle/...` either way) and of its
    checkpoints after stage 2, by path relative to the run.

    The checkpoints' JSON files record where their inputs were (`<run>/stage1`, ...), so a rerun in another work dir
    differs there by its name alone: in JSON, the run's own path is read as `<run>` before hashing."""
    names = sorted({run.as_posix(), run.resolve().as_posix()}, key=len, reverse=True)
    out = {}
    tops = {"bundle": bundle or run / "bundle"} | {s: run / s for s in SECOND_PASS if (run / s).is_dir()}
    for top, root in tops.items():
        for f in sorted(root.rglob("*")):
            if f.is_file():
                data = f.read_bytes()
                if f.suffix == ".json":
                    for name in names:
                        data = data.replace(name.encode(), b"<run>")
                out[f"{top}/{f.relative_to(root).as_posix()}"] = hashlib.sha256(data).hexdigest()
    return out


def compare(a: Path | dict[str, str], b: Path | dict[str, str]) -> dict[str, Any]:
    """Which files differ between two runs' bundles and checkpoints after stage 2, each given as its work dir or as
    its digests (the manifest and the training metrics carry timings, so they are listed apart)."""
    da, db = (x if isinstance(x, dict) else digests(x) for x in (a, b))
    differ = sorted(k for k in da.keys() | db.keys() if da.get(k) != db.get(k))
    timed = [k for k in differ if k == "bundle/manifest.json" or k.endswith("/metrics.jsonl")]
    return {"files": len(da), "identical": len(timed) == len(differ),
            "differ": differ}


def summarize(reports: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Per split and type: each seed's accuracy (%), mean, min, max; each run's seconds; and where each gated stage
    stopped (steps, last probe score %)."""
    out: dict[str, Any] = {"seeds": sorted(reports), "splits": {}, "seconds": {}, "gates": {}}
    for split, key in SPLITS.items():
        rows: dict[str, dict[str, Any]] = {}
        for seed in sorted(reports):
            res = reports[seed]["stages"]["eval"][key]
            for name, acc in [*res["per_type"].items(), ("overall", res["overall"])]:
                rows.setdefault(name, {"by_seed": {}})["by_seed"][seed] = round(100 * acc, 1)
        for row in rows.values():
            vals = list(row["by_seed"].values())
            row |= {"mean": round(statistics.fmean(vals), 1), "min": min(vals), "max": max(vals)}
        out["splits"][split] = rows
    for seed, rep in reports.items():
        out["seconds"][seed] = rep.get("total_seconds")
        gated = {stage: r["gate"] for stage, r in rep["stages"].items() if isinstance(r, dict) and r.get("gate")}
        out["gates"][seed] = {stage: {"steps": g["steps"], "score": round(100 * g["history"][-1]["score"], 1)}
                              for stage, g in gated.items()}
    return out


def markdown(summary: dict[str, Any]) -> str:
    seeds = summary["seeds"]
    lines = []
    for split, rows in summary["splits"].items():
        lines += [f"{split} wordings:", "", "| type | " + " | ".join(f"clip seed {s}" for s in seeds)
                  + " | mean | range |", "| --- |" + " --- |" * (len(seeds) + 2)]
        for name, row in rows.items():
            cells = [f"{row['by_seed'][s]:.1f}" for s in seeds]
            label = f"**{name}**" if name == "overall" else name
            spread = f"{row['mean']:.1f} | {row['min']:.1f}–{row['max']:.1f}"
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {spread} |")
        lines.append("")
    lines.append("wall time (s): " + ", ".join(f"seed {s}: {summary['seconds'][s]}" for s in seeds))
    gates = summary.get("gates", {})
    if any(gates.get(s) for s in seeds):
        per_seed = {s: ", ".join(f"{stage} {g['steps']:,} steps ({g['score']:.1f}%)" for stage, g in gates[s].items())
                    for s in seeds if gates.get(s)}
        lines.append("gated stages (steps, last probe): " + "; ".join(f"seed {s}: {t}" for s, t in per_seed.items()))
    return "\n".join(lines)


def run_spread(seeds: list[int], work: Path, rerun: int | None = None,
               config: str | Path = RECIPE_YAML, records: Path | None = None) -> dict[str, Any]:
    reports = {s: run_one(s, work / f"clip-seed-{s}", config, records) for s in seeds}
    summary = summarize(reports)
    if rerun is not None:
        first: Path | dict[str, str] = work / f"clip-seed-{rerun}"
        if rerun not in reports:
            run_one(rerun, first, config, records)
        if _report(first) is None:  # read from its record: compare with the files that run made, wherever it ran
            first = read_record(records, rerun, config)["digests"]
        again = work / f"clip-seed-{rerun}-rerun"
        run_one(rerun, again, config)
        summary["rerun"] = {"seed": rerun, "against": "record" if isinstance(first, dict) else "work dir",
                            **compare(first, again)}
    (work / "spread.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.demo.spread", description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="clip seeds, one whole recipe run each")
    p.add_argument("--work", default="build/demo-spread", help="one work dir per seed goes in here")
    p.add_argument("--rerun", type=int, default=None, metavar="SEED",
                   help="run this seed a second time and compare the two runs' files byte for byte")
    p.add_argument("--config", default=str(RECIPE_YAML), help="recipe YAML")
    p.add_argument("--records", default=None, metavar="DIR",
                   help="keep each finished run's report and file digests here, and read seeds (and a rerun's first "
                        "run) from here when their work dirs are gone")
    p.add_argument("--record", default=None, metavar="RUN",
                   help="only record RUN, a finished recipe work dir (make demo-model's), in --records, and exit")
    p.add_argument("--bundle", default=None, metavar="DIR", help="with --record: RUN's bundle, if not RUN/bundle")
    args = p.parse_args(argv)
    if args.record and not args.records:
        p.error("--record needs --records")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        if args.record:
            path = record_run(Path(args.records), Path(args.record), Path(args.bundle) if args.bundle else None,
                              args.config)
            print(f"spread: recorded {args.record} as {path}")
            return 0
        summary = run_spread(args.seeds, Path(args.work), args.rerun, args.config,
                             Path(args.records) if args.records else None)
    except LlavaLocalError as e:
        print(f"spread: error: {e}", file=sys.stderr)
        return e.exit_code
    print(markdown(summary))
    if "rerun" in summary:
        r = summary["rerun"]
        print(f"rerun of clip seed {r['seed']} (against its {r['against']}): {r['files']} files, "
              + ("byte-identical" if r["identical"] else f"differ: {', '.join(r['differ'])}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
