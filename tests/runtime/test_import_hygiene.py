"""`llava_local` must never import torch, transformers, onnx or textual, not even indirectly: checked in a clean
subprocess that imports the package and the CLI and then runs a whole one-shot chat."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = ("torch", "transformers", "onnx", "onnxscript", "textual", "tui", "training", "converters")

SCRIPT = """
import sys
import llava_local, llava_local.cli
from llava_local import open_model, ChatSession, GenerationConfig, RuntimeConfig
stage1 = sorted({m.split('.')[0] for m in sys.modules})
code = llava_local.cli.main(["chat", sys.argv[1], "--model", sys.argv[2], "--prompt", "Hi", "--max-tokens", "3"])
assert code == 0, code
code = llava_local.cli.main(["info", sys.argv[2]])
assert code == 0, code
stage2 = sorted({m.split('.')[0] for m in sys.modules})
print("STAGE1", " ".join(stage1))
print("STAGE2", " ".join(stage2))
"""


def test_runtime_imports_no_heavy_frameworks(rt_bundle, rt_images, tmp_path):
    env = {**os.environ, "LLAVA_LOCAL_HOME": str(tmp_path), "LLAVA_LOCAL_THREADS": "1", "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(rt_images[0]), str(rt_bundle)], capture_output=True,
                       text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = dict(line.split(" ", 1) for line in r.stdout.splitlines() if line.startswith("STAGE"))
    light, used = set(lines["STAGE1"].split()), set(lines["STAGE2"].split())
    assert not light & set(FORBIDDEN), light & set(FORBIDDEN)
    assert not used & set(FORBIDDEN), used & set(FORBIDDEN)
    assert "llama_cpp" not in light and "onnxruntime" not in light  # import llava_local stays cheap
    assert {"llama_cpp", "onnxruntime"} <= used  # and the chat really ran on them
