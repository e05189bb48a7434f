"""The shipped demo bundle: small, self-describing, the default model, and it answers held-out questions.

These run the real runtime (ONNX Runtime + llama.cpp through `llava_local.ChatSession`) on the bundle in
`models/llava-local-tiny`, in the teacher's wordings and in the held-out ones people use. The accuracy thresholds sit
about two questions under what the shipped bundle (recipes 16 and 17: the same weights) scores on this fixed held-out
seed (30 scenes, 203 questions each: teacher 97.0% overall, held-out 92.1%), so a broken bundle, runtime or
preprocessing change fails them. The project's target (90% overall and 80% for every type, on both splits) is
measured on 300 scenes (docs/demo-model.md); 30 scenes are too few to gate on it per type.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from llava_local.manifest import load_manifest, verify_files
from llava_local.models import resolve_model
from training.demo.corpus import QTYPES
from training.demo.evaluate import evaluate_bundle
from training.demo.recipe import RECIPE_ID

HELD_OUT_SEED = 4242  # never used for training (the recipe trains on world 0)
N_SCENES = 30
MIN_OVERALL = {"teacher": 0.95, "heldout": 0.9}
# every type is gated, about two questions under the shipped bundle's count on these scenes
MIN_PER_TYPE = {
    "teacher": {"colour": 0.93, "shape": 0.93, "count": 0.93, "position": 0.93, "relation": 0.92, "existence": 0.93,
                "description": 0.73},
    "heldout": {"colour": 0.93, "shape": 0.79, "count": 0.9, "position": 0.93, "relation": 0.76, "existence": 0.83,
                "description": 0.8},
}


def test_bundle_is_small_complete_and_records_its_recipe(shipped):
    m = load_manifest(shipped)
    verify_files(shipped, m)
    total = sum(f.stat().st_size for f in shipped.iterdir())
    assert total <= 25 * 1024 * 1024, f"bundle is {total} bytes"
    recipe = m.provenance["recipe"]
    assert recipe["data_seed"] == 0 and recipe["id"] == RECIPE_ID  # the committed recipe made the shipped bundle
    assert "training.demo.recipe" in recipe["command"] and recipe["config"]["world_seed"] == 0
    assert recipe["run"] == {"from": "data", "empty_work_dir": True}  # one run from nothing, not a restart
    assert not m.provenance["source"].startswith("/")  # no build machine's absolute path
    assert m.llm.default in ("q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0")  # a quantized GGUF, not f16/f32


def test_it_is_the_default_model(shipped):
    assert resolve_model(None) == shipped


@pytest.mark.parametrize("phrasing", ["teacher", "heldout"])
def test_held_out_accuracy(shipped, phrasing):
    result = evaluate_bundle(shipped, N_SCENES, HELD_OUT_SEED, threads=1, phrasing=phrasing)
    per_type = {t: c / n for t, (c, n) in result.per_type().items()}
    wrong = [(it["type"], it["question"], it["prediction"]) for it in result.items if not it["correct"]][:10]
    assert set(per_type) == set(QTYPES)
    assert result.overall() >= MIN_OVERALL[phrasing], (result.summary(), wrong)
    for qtype, minimum in MIN_PER_TYPE[phrasing].items():
        assert per_type[qtype] >= minimum, (qtype, result.summary(), wrong)


def test_eval_command_prints_json_and_gates_on_accuracy(shipped):
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "llava_local.cli", "eval", "synthetic", "--n", "4", "--seed",
                               "77", "--threads", "1", *args], capture_output=True, text=True, timeout=300)

    ok = cli("--json")
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert report["n"] == 4 and report["bundle"]["n_questions"] >= 20 and report["bundle"]["overall"] >= 0.2
    gate = cli("--min-accuracy", "1.0", "--json")  # fails unless every answer is right
    assert gate.returncode == (0 if json.loads(gate.stdout)["bundle"]["overall"] == 1.0 else 1)
    bad = cli("--seed", "0")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "training world" in bad.stderr
    no_llm = cli("--text-llm", str(shipped))  # a bundle is not a text-only LLaMA directory
    assert no_llm.returncode == 2 and no_llm.stderr.count("\n") == 1 and "--text-llm" in no_llm.stderr
