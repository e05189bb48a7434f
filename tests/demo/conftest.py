"""Fixtures for the demo-model tests: an isolated LLAVA_LOCAL_HOME and the shipped bundle's path.

The shipped bundle (`models/llava-local-tiny`) is part of the repository, so its tests never skip: a missing or
broken bundle fails them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "models" / "llava-local-tiny"


@pytest.fixture(autouse=True)
def _demo_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAVA_LOCAL_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LLAVA_LOCAL_MODEL", raising=False)
    # One llama.cpp thread: on a shared 2-core CI box, spinning worker threads make tiny models much slower.
    monkeypatch.setenv("LLAVA_LOCAL_THREADS", "1")
    return tmp_path / "home"


@pytest.fixture(scope="session")
def shipped() -> Path:
    return SHIPPED
