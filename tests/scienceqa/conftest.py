"""Fixtures for the ScienceQA tests: a hand-written release in the official layout (see sqa_fixtures.py)."""

from __future__ import annotations

import pytest
from sqa_fixtures import make_release


@pytest.fixture(scope="session")
def sqa_release(tmp_path_factory):
    root = tmp_path_factory.mktemp("scienceqa")
    return root, make_release(root)
