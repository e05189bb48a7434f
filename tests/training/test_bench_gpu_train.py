"""`bench/gpu_train.py` (`make bench-gpu`) end to end at its toy size on CPU: random base models and data are
written, the real trainer runs the timed steps, and one JSON object reports throughput from the trainer's metrics."""

from __future__ import annotations

import json
import math


def test_gpu_train_bench_runs_at_tiny_size(tmp_path, capsys):
    from bench.gpu_train import main

    main(["--size", "tiny", "--steps", "2", "--seq", "800", "--micro", "1", "--work", str(tmp_path)])
    text = capsys.readouterr().out
    report = json.loads(text[text.rindex('{\n  "size"'):])
    assert (report["size"], report["world"], report["steps_timed"]) == ("tiny", 1, 2)
    assert report["tokens_per_s"] > 0 and math.isfinite(report["loss_last"])
    assert (tmp_path / "tiny" / "READY").is_file()
