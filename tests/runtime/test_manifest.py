"""Manifest validation: every way a bundle can be broken gives a BundleError that names the problem."""

from __future__ import annotations

import json
import shutil

import pytest

from llava_local.errors import BundleError
from llava_local.manifest import load_manifest, verify_files


@pytest.fixture
def bundle(rt_bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(rt_bundle, dst)
    return dst


def _edit(bundle, fn):
    path = bundle / "manifest.json"
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))


def test_valid_bundle_loads(bundle):
    m = load_manifest(bundle)
    assert m.vision.tokens_per_image == 16 and m.vision.embed_dim == 64
    verify_files(bundle, m)


@pytest.mark.parametrize("edit,match", [
    (lambda d: d.pop("vision"), "missing field 'vision'"),
    (lambda d: d.update(schema_version=99), "schema_version 99"),
    (lambda d: d.update(template="alpaca"), "unknown chat template"),
    (lambda d: d["llm"].update(default="q4_k_m"), "default 'q4_k_m'"),
    (lambda d: d["llm"]["files"].update(q9="x.gguf"), "unknown llm variant 'q9'"),
    (lambda d: d["vision"].update(tokens_per_image=0), "must be positive"),
    (lambda d: d["files"].pop("vision.onnx"), "no sha256/size entry"),
    (lambda d: d["vision"].update(tokens_per_image="many"), "malformed"),
    (lambda d: d["llm"]["files"].update(f32="../llm-f32.gguf"), "plain names|no sha256"),
    (lambda d: d.update(suggested_prompts="Describe it."), "suggested_prompts must be a list"),
    (lambda d: d.update(suggested_prompts=["ok"] * 9), "at most 8"),
    (lambda d: d.update(suggested_prompts=["two\nlines"]), "one printable line"),
    (lambda d: d.update(suggested_prompts=["  "]), "one printable line"),
    (lambda d: d.update(suggested_prompts=[3]), "one printable line"),
])
def test_bad_fields(bundle, edit, match):
    _edit(bundle, edit)
    with pytest.raises(BundleError, match=match):
        load_manifest(bundle)


def test_not_json(bundle):
    (bundle / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_manifest(bundle)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="not found"):
        load_manifest(tmp_path / "nothing")
    with pytest.raises(BundleError, match="no manifest.json"):
        load_manifest(tmp_path)


def test_missing_and_truncated_files(bundle):
    (bundle / "vision.onnx").write_bytes(b"short")
    with pytest.raises(BundleError, match="truncated"):
        load_manifest(bundle)
    (bundle / "vision.onnx").unlink()
    with pytest.raises(BundleError, match="vision.onnx is missing"):
        load_manifest(bundle)


def test_verify_detects_corruption(bundle):
    m = load_manifest(bundle)
    data = bytearray((bundle / "llm-f32.gguf").read_bytes())
    data[-1] ^= 0xFF  # same size, different content
    (bundle / "llm-f32.gguf").write_bytes(bytes(data))
    load_manifest(bundle)  # the cheap check passes...
    with pytest.raises(BundleError, match="sha256"):
        verify_files(bundle, m)  # ...the hash does not


def test_suggested_prompts_reach_model_info_and_info_command(bundle, capsys):
    from llava_local import RuntimeConfig, open_model
    from llava_local.cli import main

    asks = ["Describe the image briefly.", "How many circles are there?"]
    _edit(bundle, lambda d: d.update(suggested_prompts=asks))
    assert load_manifest(bundle).suggested_prompts == tuple(asks)
    with open_model(bundle, RuntimeConfig(device="cpu", n_threads=1)) as model:
        assert model.info.suggested_prompts == tuple(asks)
    assert main(["info", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert "  try asking      Describe the image briefly.\n                  How many circles are there?\n" in out
    _edit(bundle, lambda d: d.pop("suggested_prompts"))  # optional: older bundles have none
    assert load_manifest(bundle).suggested_prompts == ()


def test_shipped_demo_bundle_suggests_questions():
    from pathlib import Path

    from training.demo.recipe import SUGGESTED_PROMPTS

    demo = Path(__file__).resolve().parents[2] / "models" / "llava-local-tiny"
    assert load_manifest(demo).suggested_prompts == SUGGESTED_PROMPTS  # the recipe stamps what ships


def test_shipped_demo_manifest_names_no_machine_paths():
    import os
    from pathlib import Path

    from training.demo.recipe import _portable

    def strings(x):
        if isinstance(x, dict):
            for v in x.values():
                yield from strings(v)
        elif isinstance(x, list):
            for v in x:
                yield from strings(v)
        elif isinstance(x, str):
            yield x

    repo = Path(__file__).resolve().parents[2]
    d = json.loads((repo / "models" / "llava-local-tiny" / "manifest.json").read_text())
    assert [s for s in strings(d) if os.path.isabs(s)] == []
    work = Path("/elsewhere/demo-work")
    assert _portable(str(repo / "build" / "r11" / "final"), work) == "build/r11/final"
    assert _portable(str(work / "final"), work) == "<work>/final"
    assert _portable("/opt/ckpt", work) == "/opt/ckpt" and _portable(None, work) is None
