"""Training progress: a live line for people, JSON lines (and TensorBoard) for tools.

Contract: `MetricsLogger(out_dir, total_steps, enabled)`; `log(step, values, step_seconds)` appends
`{"step", "time", "step_s", "tokens_per_s", ...values}` to `out_dir/metrics.jsonl` for every step, and updates
one status line on stderr (rewritten in place on a terminal, one line per `log_every` steps otherwise):
`step 12/300 | loss 2.3141 | lr 1.9e-05 | 5,210 tok/s | ETA 0:41:10`. Only rank 0 logs (`enabled`). A resumed
run appends to the same file, so a step killed before its checkpoint appears twice; readers keep the last.
"""

from __future__ import annotations

import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any


class MetricsLogger:
    def __init__(self, out_dir: Path, total_steps: int, enabled: bool = True, tensorboard: bool = True,
                 start_step: int = 0) -> None:
        self.enabled = enabled
        self.total = total_steps
        self.start_step = start_step
        self.started = time.perf_counter()
        self.tty = sys.stderr.isatty()
        self._file = None
        self._tb = None
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(out_dir / "metrics.jsonl", "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(out_dir / "tensorboard"))
            except ImportError:  # tensorboard is optional
                self._tb = None

    def log(self, step: int, values: dict[str, Any], step_seconds: float, force: bool = True) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.started
        rate = (step - self.start_step) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - step) / rate if rate > 0 else 0.0
        tps = values.get("tokens", 0) / step_seconds if step_seconds > 0 else 0.0
        record = {"step": step, "time": round(time.time(), 3), "step_s": round(step_seconds, 4),
                  "tokens_per_s": round(tps, 1), **values}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(f"train/{k}", v, step)
            self._tb.add_scalar("train/tokens_per_s", tps, step)
        line = (f"step {step}/{self.total} | loss {values.get('loss', float('nan')):.4f} | "
                f"lr {values.get('lr', 0.0):.2e} | {tps:,.0f} tok/s | ETA {datetime.timedelta(seconds=int(eta))}")
        if self.tty:
            print("\r" + line, end="\n" if step == self.total else "", file=sys.stderr, flush=True)
        elif force or step == self.total:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty and self.enabled:
            print(file=sys.stderr)
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
