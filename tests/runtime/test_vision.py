"""The ONNX vision encoder: provider probing (quiet, honest about what really loaded), shape checks against the
manifest, and the errors for graphs that do not match it."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llava_local.errors import BundleError, EngineError
from llava_local.manifest import load_manifest
from llava_local.vision import VisionEncoder, open_session

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def spec_and_path(rt_bundle):
    m = load_manifest(rt_bundle)
    return m.vision, rt_bundle / m.vision.files["fp32"]


def _usable(provider: str, path) -> bool:
    import onnxruntime as ort

    if provider not in ort.get_available_providers():
        return False
    ort.set_default_logger_severity(4)
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=[provider, "CPUExecutionProvider"])
    return sess.get_providers()[0] == provider


def test_encode_shapes_and_counts(spec_and_path):
    spec, path = spec_and_path
    enc = VisionEncoder(path, spec, device="cpu")
    assert enc.backend == "CPU"
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    out = enc.encode(x)
    assert out.shape == (2, spec.tokens_per_image, spec.embed_dim) and out.dtype == np.float32
    assert enc.calls == 1 and enc.images_encoded == 2
    np.testing.assert_allclose(enc.encode(x[:1])[0], out[0], atol=1e-5)  # batch-independent
    with pytest.raises(EngineError, match=r"\[B,3,S,S\]"):
        enc.encode(x[0])


def test_auto_is_quiet_and_reports_the_real_provider(spec_and_path):
    # A fresh process: ONNX Runtime prints a CUDA load failure only the first time, so test that first time.
    spec, path = spec_and_path
    script = ("import sys; from llava_local.vision import VisionEncoder; "
              "from llava_local.manifest import load_manifest; "
              "m = load_manifest(sys.argv[1]); print(VisionEncoder(sys.argv[2], m.vision, 'auto').backend)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("LLAVA_LOCAL_DEBUG", None)
    r = subprocess.run([sys.executable, "-c", script, str(path.parent), str(path)], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # no "Failed to load libonnxruntime_providers_cuda.so" on a CPU-only machine
    cuda = _usable("CUDAExecutionProvider", path)
    assert r.stdout.strip() == ("CUDA" if cuda else "CoreML" if sys.platform == "darwin" else "CPU")


@pytest.mark.parametrize("device,provider", [("cuda", "CUDAExecutionProvider"), ("metal", "CoreMLExecutionProvider")])
def test_explicit_gpu_device_is_used_or_refused(spec_and_path, device, provider):
    spec, path = spec_and_path
    if _usable(provider, path):
        assert VisionEncoder(path, spec, device=device).backend in ("CUDA", "CoreML")
    else:
        with pytest.raises(EngineError, match=f"--device {device}.*--device cpu"):
            VisionEncoder(path, spec, device=device)


def test_output_shape_must_match_the_manifest(spec_and_path):
    spec, path = spec_and_path
    enc = VisionEncoder(path, dataclasses.replace(spec, tokens_per_image=spec.tokens_per_image + 1), device="cpu")
    with pytest.raises(BundleError, match="manifest says"):
        enc.encode(np.zeros((1, 3, 32, 32), np.float32))


def test_wrong_io_names_and_broken_graph(spec_and_path, tmp_path):
    spec, path = spec_and_path
    with pytest.raises(BundleError, match="no input 'pixels'"):
        VisionEncoder(path, dataclasses.replace(spec, input_name="pixels"), device="cpu")
    with pytest.raises(BundleError, match="no output 'feats'"):
        VisionEncoder(path, dataclasses.replace(spec, output_name="feats"), device="cpu")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(path.read_bytes()[:500])
    with pytest.raises(BundleError, match="cannot load"):
        open_session(broken, "cpu")


def test_wrong_image_size_is_an_error_not_a_crash(spec_and_path):
    spec, path = spec_and_path
    enc = VisionEncoder(path, spec, device="cpu")
    with pytest.raises((EngineError, BundleError)):
        enc.encode(np.zeros((1, 3, 48, 48), np.float32))
