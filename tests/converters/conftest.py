"""Fixtures of the converter tests: a layout-c checkpoint that covers the other half of the variants.

`tiny_c_checkpoint` (session): our training output format ("layout c", `llava_local.json`) with a byte-level
BPE tokenizer, a linear projector, hub-style `vision_tower.vision_model.*` keys, crop preprocessing and the
llava_v1 template; together with `tiny_hf_checkpoint` (SPM, mlp2x_gelu, flat keys, pad, vicuna_v1) and
`tiny_original_checkpoint` every branch of the loader is exercised.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_c_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.tiny import make_tiny_llava_hf

    return make_tiny_llava_hf(tmp_path_factory.mktemp("tiny-c") / "checkpoint", tokenizer="bpe", projector="linear",
                              layout_c=True, nested_vision_keys=True, do_pad=False, template="llava_v1", seed=1)
