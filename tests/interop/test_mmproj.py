"""The mmproj writer's layout (what llama.cpp's legacy converter writes), the reader, and the torch-free ONNX graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from interop_helpers import rewrite_gguf

from converters.mmproj import read_mmproj
from converters.mmproj_onnx import build_onnx, reference_forward
from converters.vision_onnx import run_onnx

# The keys convert_image_encoder_to_gguf.py --llava-projector writes for a LLaVA-1.5 tower (tech memo §4), plus the
# feature layer it writes when the config names one.
LEGACY_KEYS = {
    "general.architecture", "general.file_type", "general.name", "general.description",
    "clip.has_text_encoder", "clip.has_vision_encoder", "clip.has_llava_projector", "clip.projector_type",
    "clip.vision.image_size", "clip.vision.patch_size", "clip.vision.embedding_length",
    "clip.vision.feed_forward_length", "clip.vision.projection_dim", "clip.vision.attention.head_count",
    "clip.vision.attention.layer_norm_epsilon", "clip.vision.block_count", "clip.vision.feature_layer",
    "clip.vision.image_mean", "clip.vision.image_std", "clip.use_gelu",
}


def test_writer_layout_is_the_legacy_converters(legacy_pair):
    import gguf

    _, mmproj = legacy_pair
    r = gguf.GGUFReader(str(mmproj))
    keys = {k for k in r.fields if not k.startswith("GGUF.")}
    assert keys == LEGACY_KEYS
    value = {k: r.fields[k].contents() for k in keys}
    assert value["general.architecture"] == "clip" and value["clip.projector_type"] == "mlp"
    assert value["general.description"] == "image encoder for LLaVA" and value["general.file_type"] == 1
    assert value["clip.has_vision_encoder"] and value["clip.has_llava_projector"]
    assert not value["clip.has_text_encoder"] and not value["clip.use_gelu"]  # the tiny CLIP uses quick_gelu
    # 3 CLIP layers, feature layer -2: the file holds 2 blocks and names hidden state 2
    assert value["clip.vision.block_count"] == 2 and value["clip.vision.feature_layer"] == [2]
    tensors = {t.name: t for t in r.tensors}
    block = {f"v.blk.{i}.{p}.{k}" for i in range(2) for k in ("weight", "bias")
             for p in ("attn_q", "attn_k", "attn_v", "attn_out", "ln1", "ln2", "ffn_down", "ffn_up")}
    assert set(tensors) == block | {"v.class_embd", "v.patch_embd.weight", "v.position_embd.weight",
                                    "v.pre_ln.weight", "v.pre_ln.bias", "mm.0.weight", "mm.0.bias",
                                    "mm.2.weight", "mm.2.bias"}
    for name, t in tensors.items():
        matrix = len(t.shape) >= 2  # the legacy script: every 2-D/4-D ".weight" in F16, the rest F32
        assert t.tensor_type.name == ("F16" if matrix else "F32"), name
    # the legacy names are swapped: "ffn_down" is CLIP's fc1 (64 → 128), "ffn_up" its fc2 (128 → 64); GGUF ne order
    assert list(tensors["v.blk.0.ffn_down.weight"].shape) == [64, 128]
    assert list(tensors["v.blk.0.ffn_up.weight"].shape) == [128, 64]
    assert list(tensors["v.position_embd.weight"].shape) == [64, 17]


def test_reader_gives_back_the_checkpoint_weights(legacy_pair, f16_checkpoint):
    from converters.layouts import load_checkpoint

    mm = read_mmproj(legacy_pair[1])
    s = mm.spec
    assert (s.image_size, s.patch_size, s.width, s.heads, s.blocks, s.ffn, s.out_dim) == (56, 14, 64, 4, 2, 128, 256)
    assert s.projector == "mlp2x_gelu" and s.quick_gelu and s.tokens_per_image == 16 and s.preprocess_mode is None
    ck = load_checkpoint(f16_checkpoint)
    v, p = ck.vision_state, ck.projector_state
    pairs = {"blk.1.fc1.weight": v["encoder.layers.1.mlp.fc1.weight"],
             "blk.1.fc2.bias": v["encoder.layers.1.mlp.fc2.bias"],
             "blk.0.attn_q.weight": v["encoder.layers.0.self_attn.q_proj.weight"],
             "patch_embd": v["embeddings.patch_embedding.weight"], "mm2.weight": p["linear_2.weight"]}
    for name, t in pairs.items():
        np.testing.assert_array_equal(mm.weights[name], t.numpy(), err_msg=name)  # f16-exact weights: bit-equal


def test_fc1_fc2_are_read_by_shape_not_name(legacy_pair, tmp_path):
    """A file that names fc1 `ffn_up` (the non-legacy spelling) reads the same."""

    def swap(t):
        return t.name.replace("ffn_down", "TMP").replace("ffn_up", "ffn_down").replace("TMP", "ffn_up"), t.data, \
            t.tensor_type

    swapped = rewrite_gguf(legacy_pair[1], tmp_path / "swapped.gguf", tensor=swap)
    a, b = read_mmproj(legacy_pair[1]), read_mmproj(swapped)
    assert a.weights.keys() == b.weights.keys()
    for k in a.weights:
        np.testing.assert_array_equal(a.weights[k], b.weights[k], err_msg=k)


def test_quantized_mmproj_is_dequantized(legacy_pair, tmp_path):
    """Q8_0 matrices (gguf-py quantizes them here) come back within Q8_0's error."""
    import gguf

    def to_q8(t):
        arr = gguf.quants.dequantize(t.data, t.tensor_type).reshape([int(n) for n in reversed(t.shape)])
        if arr.ndim == 2 and t.name != "v.position_embd.weight":
            return t.name, gguf.quants.quantize(arr, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
        return t.name, np.ascontiguousarray(arr.astype(np.float16 if arr.ndim == 4 else np.float32)), None

    q8 = rewrite_gguf(legacy_pair[1], tmp_path / "mmproj-q8_0.gguf", tensor=to_q8)
    a, b = read_mmproj(legacy_pair[1]), read_mmproj(q8)
    assert b.spec.tensor_types.get("Q8_0") == 2 * 6 + 2
    for k in a.weights:
        scale = float(np.abs(a.weights[k]).max())
        assert np.abs(a.weights[k] - b.weights[k]).max() <= scale / 127 + 1e-7, k


def test_onnx_graph_equals_numpy_reference_and_convert(legacy_pair, f16_bundle, tmp_path: Path):
    """The torch-free graph, its numpy twin and `convert`'s torch-exported graph agree on the same weights."""
    from converters.verify import sample_pixels
    from llava_local.manifest import load_manifest

    mm = read_mmproj(legacy_pair[1])
    path = build_onnx(mm, tmp_path / "v.onnx")
    import onnx

    model = onnx.load(str(path))
    assert model.ir_version <= 8 and model.opset_import[0].version == 17
    pixels = sample_pixels(load_manifest(f16_bundle).preprocess)  # 3 images: the batch axis is dynamic
    ours, ref = run_onnx(path, pixels), reference_forward(mm, pixels)
    theirs = run_onnx(f16_bundle / "vision.onnx", pixels)
    assert ours.shape == theirs.shape == (3, 16, 256)
    assert np.abs(ours - ref).max() <= 1e-4
    assert np.abs(ours - theirs).max() <= 1e-3, np.abs(ours - theirs).max()
    assert np.abs(run_onnx(path, pixels[:1]) - ours[:1]).max() <= 1e-5


@pytest.mark.parametrize("layers_kept", [1])
def test_feature_layer_below_block_count_applies_fewer_blocks(legacy_pair, tmp_path, layers_kept):
    path = rewrite_gguf(legacy_pair[1], tmp_path / "fl.gguf", set_={"clip.vision.feature_layer": [layers_kept]})
    mm = read_mmproj(path)
    assert mm.spec.blocks == layers_kept and mm.spec.blocks_in_file == 2
    pixels = np.random.default_rng(0).standard_normal((1, 3, 56, 56)).astype(np.float32)
    full = reference_forward(read_mmproj(legacy_pair[1]), pixels)
    assert np.abs(reference_forward(mm, pixels) - full).max() > 1e-3  # one block fewer is a different output


def test_linear_projector_layout_reads_and_runs(f16_checkpoint, tmp_path):
    """The legacy LLaVA-v1 linear projector (`mm.weight`/`mm.bias`) reads as "linear"; graph and reference agree."""
    from converters.layouts import load_checkpoint
    from converters.mmproj import write_mmproj

    ck = load_checkpoint(f16_checkpoint)
    w2 = ck.projector_state["linear_2.weight"]
    ck.projector_type = "linear"
    ck.projector_state = {"linear.weight": w2[:, :64].contiguous(), "linear.bias": ck.projector_state["linear_2.bias"]}
    mm = read_mmproj(write_mmproj(ck, tmp_path / "linear.gguf"))
    assert mm.spec.projector == "linear" and mm.spec.out_dim == 256
    pixels = np.random.default_rng(0).standard_normal((2, 3, 56, 56)).astype(np.float32)
    out = run_onnx(build_onnx(mm, tmp_path / "l.onnx"), pixels)
    assert np.abs(out - reference_forward(mm, pixels)).max() <= 1e-4


@pytest.mark.parametrize("values,match", [
    ({"clip.vision.attention.head_count": 0}, "impossible header"),
    ({"clip.vision.patch_size": 0}, "impossible header"),
    ({"clip.vision.image_mean": [0.5, 0.5]}, "image_mean must hold 3 numbers"),
])
def test_impossible_header_numbers_are_one_line(legacy_pair, tmp_path, values, match):

    from llava_local.errors import ConversionError

    bad = rewrite_gguf(legacy_pair[1], tmp_path / "bad-mmproj.gguf", set_=values)
    with pytest.raises(ConversionError, match=match):  # was ZeroDivisionError / IndexError
        read_mmproj(bad)
