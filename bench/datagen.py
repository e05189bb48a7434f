"""Benchmark the synthetic world: `python -m bench.datagen --n 10000 -o /tmp/shapes` (`make bench-data`).

Contract: runs `synthesize` from scratch (journal discarded), then re-checks every written answer with
`synth.verify`, and prints one JSON object: scenes, samples, claims checked, failures, wall seconds for the
whole run, the rendering part and the verification, and the CPU seconds of the run (with its worker
processes) next to the load average, since on a shared machine wall time measures the neighbours too.
Exit code 1 if any answer fails the check.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from training.datagen.synth import synthesize, verify


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("-o", "--output", type=Path, required=True)
    args = p.parse_args(argv)
    c0, t0 = _cpu(), time.monotonic()
    stats = synthesize(args.n, args.seed, args.output, size=args.size, restart=True, progress=False)
    c1, t1 = _cpu(), time.monotonic()
    checked = verify(args.output)
    t2 = time.monotonic()
    print(json.dumps({
        "scenes": args.n, "samples": checked["samples"], "claims_checked": checked["claims"],
        "failures": len(checked["failures"]), "synth_seconds": round(t1 - t0, 2),
        "render_seconds": stats["render_seconds"], "pipeline_seconds": stats["seconds"],
        "verify_seconds": round(t2 - t1, 2), "scenes_per_second": round(args.n / (t1 - t0), 1),
        # CPU time of this process and its workers: what the run costs when it has the cores to itself.
        "synth_cpu_seconds": round(c1 - c0, 2), "load_average_1min": round(os.getloadavg()[0], 2),
    }))
    return 1 if checked["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
