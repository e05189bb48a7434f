"""Fixtures for the TUI tests: an isolated data dir, tiny images, a fake backend and a store."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from tuifakes import FakeBackend

from tui.store import Store


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """LLAVA_LOCAL_HOME in a temp dir, so sessions.db and the caches are private to the test."""
    monkeypatch.setenv("LLAVA_LOCAL_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def make_png(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (32, 24)) -> Path:
    """A small solid image with a white square, so previews have some structure."""
    img = Image.new("RGB", size, color)
    for x in range(4, 12):
        for y in range(4, 12):
            img.putpixel((x, y), (255, 255, 255))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


@pytest.fixture
def red_png(tmp_path: Path) -> Path:
    return make_png(tmp_path / "pics" / "red square.png", (200, 30, 30))


@pytest.fixture
def blue_png(tmp_path: Path) -> Path:
    return make_png(tmp_path / "pics" / "blue.png", (30, 30, 200))


@pytest.fixture
def fake() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def store(home: Path) -> Store:
    from llava_local.paths import data_dir

    s = Store(data_dir())
    yield s
    s.close()


@pytest.fixture(scope="session")
def _own_bundle(tmp_path_factory) -> Path:
    """The runtime tests' torch-free random bundle (tests/runtime/tinyllava.py), built once."""
    import importlib.util

    src = Path(__file__).parents[1] / "runtime" / "tinyllava.py"
    spec = importlib.util.spec_from_file_location("tui_tinyllava", src)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.build_bundle(tmp_path_factory.mktemp("tui-bundle") / "tiny")


@pytest.fixture
def bundle(request) -> Path:
    """The shared converter-built `tiny_bundle` when tests/conftest.py provides it, else `_own_bundle`.
    Function-scoped so it works whatever scope `tiny_bundle` has."""
    try:
        return Path(request.getfixturevalue("tiny_bundle"))
    except pytest.FixtureLookupError:
        return request.getfixturevalue("_own_bundle")
