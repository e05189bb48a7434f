"""Layout detection, tensor-name mapping coverage and the canonical description of each layout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from converters.layouts import detect_layout, load_checkpoint, load_weights, map_key, split_state
from converters.llm_gguf import gguf_name
from llava_local.errors import ConversionError


def test_detects_the_three_layouts(tiny_hf_checkpoint, tiny_original_checkpoint, tmp_path):
    assert detect_layout(tiny_hf_checkpoint) == "llava-hf"
    assert detect_layout(tiny_original_checkpoint) == "original"
    c = tmp_path / "c"
    shutil.copytree(tiny_hf_checkpoint, c)
    (c / "llava_local.json").write_text(json.dumps({"format": "llava-local-train", "version": 1}))
    assert detect_layout(c) == "llava-local"


@pytest.mark.parametrize("fixture", ["tiny_hf_checkpoint", "tiny_original_checkpoint", "tiny_c_checkpoint"])
def test_every_tensor_is_mapped_or_deliberately_skipped(fixture, request):
    src = request.getfixturevalue(fixture)
    layout = detect_layout(src)
    state = load_weights(src)
    parts, skipped = split_state(state, layout)
    assert sum(len(p) for p in parts.values()) + len(skipped) == len(state)
    ckpt = load_checkpoint(src)
    n_layers = ckpt.text_config.num_hidden_layers
    # Every LLM tensor has a GGUF name (or is a rotary buffer); the vision tower loads strictly into CLIP.
    names = {name: gguf_name(name, n_layers) for name in ckpt.llm_state}
    assert all(v is not None for k, v in names.items() if "rotary_emb" not in k)
    assert len(set(names.values())) == len(names)
    assert {"token_embd.weight", "output.weight", "output_norm.weight", "blk.0.attn_q.weight"} <= set(names.values())
    from converters.torch_ref import build_clip, build_llm, build_projector

    build_clip(ckpt), build_projector(ckpt), build_llm(ckpt)  # strict loads: no missing / unexpected tensors


@pytest.mark.parametrize(("name", "layout", "expected"), [
    ("language_model.model.layers.0.self_attn.q_proj.weight", "llava-hf",
     ("llm", "model.layers.0.self_attn.q_proj.weight")),
    ("model.language_model.norm.weight", "llava-hf", ("llm", "model.norm.weight")),
    ("language_model.lm_head.weight", "llava-hf", ("llm", "lm_head.weight")),
    ("vision_tower.vision_model.encoder.layers.1.mlp.fc1.bias", "llava-hf",
     ("vision", "encoder.layers.1.mlp.fc1.bias")),
    ("vision_tower.embeddings.class_embedding", "llava-local", ("vision", "embeddings.class_embedding")),
    ("multi_modal_projector.linear_2.weight", "llava-hf", ("projector", "linear_2.weight")),
    ("multi_modal_projector.linear.bias", "llava-local", ("projector", "linear.bias")),
    ("model.mm_projector.0.weight", "original", ("projector", "linear_1.weight")),
    ("model.mm_projector.2.bias", "original", ("projector", "linear_2.bias")),
    ("model.mm_projector.weight", "original", ("projector", "linear.weight")),
    ("model.layers.3.mlp.up_proj.weight", "original", ("llm", "model.layers.3.mlp.up_proj.weight")),
    ("model.vision_tower.vision_tower.vision_model.post_layernorm.weight", "original",
     ("vision", "post_layernorm.weight")),
    ("model.layers.0.self_attn.rotary_emb.inv_freq", "original", None),
])
def test_key_table(name, layout, expected):
    assert map_key(name, layout) == expected


def test_unknown_tensor_is_an_error():
    with pytest.raises(ConversionError, match="unexpected tensor"):
        map_key("text_model.encoder.layers.0.weight", "llava-hf")


def test_nested_vision_keys_and_linear_projector(tiny_c_checkpoint):
    assert any(k.startswith("vision_tower.vision_model.") for k in load_weights(tiny_c_checkpoint))
    ckpt = load_checkpoint(tiny_c_checkpoint)
    assert ckpt.layout == "llava-local" and ckpt.projector_type == "linear"
    assert set(ckpt.projector_state) == {"linear.weight", "linear.bias"}
    assert "embeddings.class_embedding" in ckpt.vision_state
    assert ckpt.preprocess.mode == "crop" and ckpt.template == "llava_v1" and ckpt.context_length == 1024
    assert ckpt.provenance["training"]["recipe"] == "training.tiny"


def test_preprocessing_rules(tiny_hf_checkpoint, tiny_original_checkpoint, tmp_path):
    hf = load_checkpoint(tiny_hf_checkpoint)
    assert (hf.preprocess.mode, hf.preprocess.size, hf.template) == ("pad", 56, "vicuna_v1")
    assert hf.tokens_per_image == 16 and hf.embed_dim == 256 and hf.image_token_id == 512
    no_pad = tmp_path / "nopad"
    shutil.copytree(tiny_hf_checkpoint, no_pad)
    cfg = json.loads((no_pad / "preprocessor_config.json").read_text())
    (no_pad / "preprocessor_config.json").write_text(json.dumps({**cfg, "do_pad": False}))
    assert load_checkpoint(no_pad).preprocess.mode == "crop"
    (no_pad / "preprocessor_config.json").unlink()
    assert load_checkpoint(no_pad, template="llama_2").preprocess.mode == "pad"
    orig = load_checkpoint(tiny_original_checkpoint)
    assert (orig.preprocess.mode, orig.feature_layer, orig.drop_cls, orig.image_token_id) == ("pad", -2, True, None)
    square = tmp_path / "square"
    shutil.copytree(tiny_original_checkpoint, square)
    cfg = json.loads((square / "config.json").read_text())
    (square / "config.json").write_text(json.dumps({**cfg, "image_aspect_ratio": "square"}))
    assert load_checkpoint(square).preprocess.mode == "crop"


def test_vision_tower_override_and_missing_clip(tiny_original_checkpoint, tmp_path):
    moved = tmp_path / "orig"
    shutil.copytree(tiny_original_checkpoint, moved)
    cfg = json.loads((moved / "config.json").read_text())
    (moved / "config.json").write_text(json.dumps({**cfg, "mm_vision_tower": "openai/clip-vit-large-patch14-336"}))
    with pytest.raises(ConversionError, match="--vision-tower"):
        load_checkpoint(moved)
    clip = Path(cfg["mm_vision_tower"])
    ckpt = load_checkpoint(moved, vision_tower=clip)
    assert ckpt.vision_source == clip and ckpt.vision_config.image_size == 56


@pytest.mark.parametrize("make", ["missing", "file", "empty", "no-weights", "bad-template"])
def test_bad_inputs(make, tiny_hf_checkpoint, tmp_path):
    src = tmp_path / "src"
    if make == "file":
        src.write_text("hello")
    elif make == "empty":
        src.mkdir()
    elif make == "no-weights":
        src.mkdir()
        shutil.copy(tiny_hf_checkpoint / "config.json", src / "config.json")
    elif make == "bad-template":
        src = tiny_hf_checkpoint
    with pytest.raises(ConversionError) as err:
        load_checkpoint(src, template="nope" if make == "bad-template" else None)
    assert "\n" not in str(err.value)
