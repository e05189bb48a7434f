"""Shared fixtures for every test package.

- `llava_home` (autouse): `LLAVA_LOCAL_HOME` points at a fresh temporary directory, so no test reads or writes
  the user's models, cache, config or sessions.
- `tiny_hf_checkpoint` (session): a tiny llava-hf checkpoint (`training.tiny.make_tiny_llava_hf`, SentencePiece
  tokenizer with `<image>`, mlp2x_gelu projector, 56 px images → 16 image tokens of width 256).
- `tiny_original_checkpoint` (session): a tiny original-LLaVA checkpoint; its CLIP tower is the sibling
  directory `clip/` (also named by `mm_vision_tower` in its config.json).
- `tiny_bundle` (session): the tiny llava-hf checkpoint converted once per test session by the real converter,
  with `llm-f16.gguf` (default) + `llm-q8_0.gguf` and an fp32 `vision.onnx`, verified against torch.
- `tiny_image`: a small non-square PNG made with PIL.

Heavy imports (torch, transformers) happen inside the session fixtures, so tests that use none of them never
pay for them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import llava_local  # noqa: F401  (sets ORT_DISABLE_TELEMETRY before any test imports onnxruntime)

try:  # property-based tests (tests/fuzz): few examples in `make test`, many in `make fuzz` (HYPOTHESIS_PROFILE=fuzz)
    from hypothesis import HealthCheck, settings
except ImportError:  # pragma: no cover - hypothesis comes with the dev extra
    pass
else:
    _SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture]
    settings.register_profile("ci", max_examples=30, deadline=None, database=None,
                              suppress_health_check=_SLOW_OK, derandomize=True)
    settings.register_profile("fuzz", max_examples=1000, deadline=None, suppress_health_check=_SLOW_OK)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def llava_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "llava-home"
    monkeypatch.setenv("LLAVA_LOCAL_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def tiny_hf_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.tiny import make_tiny_llava_hf

    return make_tiny_llava_hf(tmp_path_factory.mktemp("tiny-hf") / "checkpoint")


@pytest.fixture(scope="session")
def tiny_original_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.tiny import make_tiny_llava_original

    root = tmp_path_factory.mktemp("tiny-original")
    return make_tiny_llava_original(root / "checkpoint", root / "clip")


@pytest.fixture(scope="session")
def tiny_bundle(tiny_hf_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from converters.bundle import ConvertOptions, convert
    from converters.cli import quiet_libraries

    out = tmp_path_factory.mktemp("tiny-bundle") / "tiny"
    with quiet_libraries():
        convert(ConvertOptions(src=tiny_hf_checkpoint, out=out, quants=("f16", "q8_0"), vision_dtypes=("fp32",),
                               name="tiny"), show_progress=False)
    return out


@pytest.fixture
def tiny_image(tmp_path: Path) -> Path:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (48, 32), (250, 250, 250))
    draw = ImageDraw.Draw(img)
    draw.ellipse((4, 4, 24, 24), fill=(220, 30, 30))
    draw.rectangle((28, 8, 44, 28), fill=(30, 60, 220))
    path = tmp_path / "tiny.png"
    img.save(path)
    return path
