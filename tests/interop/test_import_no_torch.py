"""Importing a GGUF + mmproj pair needs no torch: a whole `llava-local import` (self-check included) in a clean
subprocess loads neither torch nor transformers (the `[import]` extra is onnx + gguf on top of the runtime)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = """
import sys
from llava_local.cli import main
code = main(["import", sys.argv[1], "--mmproj", sys.argv[2], "-o", sys.argv[3], "--quiet", "--vision-dtype", "fp32",
             "--vision-dtype", "int8"])
print("CODE", code)
print("MODULES", " ".join(sorted({m.split('.')[0] for m in sys.modules})))
"""


def test_import_runs_without_torch(legacy_pair, tmp_path):
    env = {**os.environ, "LLAVA_LOCAL_HOME": str(tmp_path / "home"), "LLAVA_LOCAL_THREADS": "1",
           "PYTHONPATH": str(REPO)}
    out = tmp_path / "bundle"
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(legacy_pair[0]), str(legacy_pair[1]), str(out)],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in r.stdout.splitlines() if line.startswith(("CODE", "MODULES")))
    assert lines["CODE"] == "0"
    modules = set(lines["MODULES"].split())
    # (gguf-py itself imports sentencepiece when it is installed: not ours to avoid)
    assert not modules & {"torch", "transformers", "onnxscript"}, modules
    assert {"onnx", "gguf", "onnxruntime", "llama_cpp"} <= modules  # it really built, checked and answered
    assert (out / "vision-int8.onnx").is_file()
