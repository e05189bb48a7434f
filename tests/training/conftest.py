"""Fixtures for training tests: tiny base models, a tiny image-text data set, and a CLI runner.

The base models come from `training.tiny.make_tiny_base_models` (random tiny CLIP + LLaMA with a SentencePiece
tokenizer), built once per session. The data is a handful of 56 px PNGs of coloured shapes with captions
(stage 1, "plain") and two-turn conversations (stage 2), some samples without an image. Everything is real:
the CLI, torch, transformers and safetensors; nothing is faked.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from train_fixtures import base_overrides, make_data  # noqa: E402


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    from training.tiny import make_tiny_base_models

    return make_tiny_base_models(tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def stage1_out(tiny_base, tiny_data, tmp_path_factory):
    """A finished tiny stage-1 run through the CLI (shared by several tests)."""
    from llava_local.cli import main

    out = tmp_path_factory.mktemp("runs") / "stage1"
    rc = main(["train", "tiny-stage1", *base_overrides(tiny_base, tiny_data[0], out)])
    assert rc == 0
    return out


@pytest.fixture(scope="session")
def stage2_out(tiny_base, tiny_data, stage1_out, tmp_path_factory):
    from llava_local.cli import main

    out = tmp_path_factory.mktemp("runs") / "stage2"
    rc = main(["train", "tiny-stage2", *base_overrides(tiny_base, tiny_data[1], out), f"model.init_from={stage1_out}",
               "optim.epochs=2"])
    assert rc == 0
    return out
