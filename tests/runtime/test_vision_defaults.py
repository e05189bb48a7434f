"""Which vision graph runs when the user names none: int8 on a CPU backend when the bundle has one whose recorded
gate passed, fp16 on CUDA when present, else the manifest's default; `--vision-dtype` always wins, and `--json` /
`info` say which was used. The int8 graph here is a real onnxruntime dynamic quantization of the tiny tower."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from llava_local import RuntimeConfig, open_model
from llava_local.bundle import int8_gate_passed, preferred_vision_dtype
from llava_local.cli import main
from llava_local.manifest import VisionSpec, file_entry, load_manifest, write_manifest


def _with_int8(src: Path, dst: Path, gate: dict | None) -> Path:
    """A copy of the bundle with vision-int8.onnx (dynamic int8 of vision.onnx) and `gate` as parity.int8_gate."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    shutil.copytree(src, dst)
    quantize_dynamic(str(dst / "vision.onnx"), str(dst / "vision-int8.onnx"), weight_type=QuantType.QInt8)
    m = load_manifest(dst)
    vision = VisionSpec(**{**m.vision.__dict__, "files": {**m.vision.files, "int8": "vision-int8.onnx"}})
    parity = {**m.parity, **({"int8_gate": gate} if gate is not None else {})}
    files = {**m.files, "vision-int8.onnx": file_entry(dst / "vision-int8.onnx")}
    write_manifest(dst, replace(m, vision=vision, parity=parity, files=files))
    return dst


PASSED = {"cosine": 0.998, "min_cosine": 0.99, "written": True}


@pytest.fixture(scope="module")
def int8_bundle(rt_bundle, tmp_path_factory):
    return _with_int8(rt_bundle, tmp_path_factory.mktemp("int8") / "b", PASSED)


def test_cpu_runs_the_gated_int8_graph_unless_told_otherwise(int8_bundle):
    with open_model(int8_bundle, RuntimeConfig(device="cpu", n_threads=1)) as m:
        assert (m.info.vision_dtype, m.vision.path.name, m.info.vision_backend) == ("int8", "vision-int8.onnx", "CPU")
        assert m.manifest.vision.default == "fp32"  # the manifest's default is not what runs on CPU
    with open_model(int8_bundle, RuntimeConfig(device="cpu", n_threads=1, vision_dtype="fp32")) as m:
        assert (m.info.vision_dtype, m.vision.path.name) == ("fp32", "vision.onnx")


@pytest.mark.parametrize("gate", [None, {"cosine": 0.95, "min_cosine": 0.99, "written": True},
                                  {"written": False, "reason": "rejected"}])
def test_int8_without_a_passed_gate_is_not_the_default(rt_bundle, tmp_path, gate):
    b = _with_int8(rt_bundle, tmp_path / "b", gate)
    assert not int8_gate_passed(load_manifest(b))
    with open_model(b, RuntimeConfig(device="cpu", n_threads=1)) as m:
        assert m.info.vision_dtype == "fp32"


def test_preferred_dtype_per_backend(int8_bundle):
    m = load_manifest(int8_bundle)
    assert [preferred_vision_dtype(m, b) for b in ("CPU", "CUDA", "CoreML")] == ["int8", "fp32", "fp32"]
    with_fp16 = replace(m, vision=replace(m.vision, files={**m.vision.files, "fp16": "vision-fp16.onnx"}))
    assert [preferred_vision_dtype(with_fp16, b) for b in ("CPU", "CUDA")] == ["int8", "fp16"]


def test_json_and_info_say_which_graph_runs(int8_bundle, rt_images, capsys):
    assert main(["chat", str(rt_images[0]), "--model", str(int8_bundle), "--prompt", "Hi", "--json",
                 "--temperature", "0", "--max-tokens", "4"]) == 0
    assert json.loads(capsys.readouterr().out)["vision_dtype"] == "int8"
    assert main(["info", str(int8_bundle)]) == 0
    assert "(default fp32; runs int8 on CPU);" in capsys.readouterr().out
    assert main(["info", str(int8_bundle), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["vision_dtype_by_backend"] == {"CPU": "int8", "CUDA": "fp32"}
