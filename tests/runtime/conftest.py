"""Fixtures for the runtime tests: a tiny random bundle (built once per session, no torch), images, a home dir.

`rt_bundle` is this package's own bundle (tests/runtime/tinyllava.py): a 2-layer LLaMA GGUF and a conv+MLP ONNX
"vision tower", built in about a second. `LLAVA_LOCAL_HOME` points at a fresh temporary directory for every test
so nothing touches the user's models or caches.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tinyllava, the test-only bundle builder

import tinyllava  # noqa: E402


@pytest.fixture(autouse=True)
def _rt_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("LLAVA_LOCAL_HOME", str(home))
    monkeypatch.delenv("LLAVA_LOCAL_MODEL", raising=False)
    # The shipped demo bundle (models/llava-local-tiny) must not answer for "no model given" cases here.
    from llava_local import models

    monkeypatch.setattr(models, "demo_candidates", lambda: [])
    # One llama.cpp thread: on a shared 2-core CI box, spinning worker threads make tiny models 10x slower.
    monkeypatch.setenv("LLAVA_LOCAL_THREADS", "1")
    return home


@pytest.fixture(scope="session")
def rt_bundle(tmp_path_factory) -> Path:
    return tinyllava.build_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


@pytest.fixture(scope="session")
def rt_images(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("images")
    return [tinyllava.write_png(d / f"img{i}.png", size=(40 + 7 * i, 30 + 3 * i), seed=i) for i in range(3)]


@pytest.fixture
def rt_model(rt_bundle):
    from llava_local import RuntimeConfig, open_model

    model = open_model(rt_bundle, RuntimeConfig(device="cpu", n_threads=1))
    yield model
    model.close()
