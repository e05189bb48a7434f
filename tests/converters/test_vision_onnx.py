"""The ONNX vision graph equals transformers' LLaVA feature path; fp16 / int8 variants and the int8 gate."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from converters import vision_onnx
from converters.layouts import load_checkpoint
from converters.torch_ref import build_vision_encoder, reference_features
from converters.verify import sample_images
from llava_local.preprocess import preprocess


def _pixels(ckpt, n=3):
    return np.concatenate([preprocess(img, ckpt.preprocess) for img in sample_images(n)])


@pytest.fixture(scope="module", params=["tiny_hf_checkpoint", "tiny_original_checkpoint"])
def exported(request, tmp_path_factory):
    ckpt = load_checkpoint(request.getfixturevalue(request.param))
    encoder, clip, proj = build_vision_encoder(ckpt)
    path = tmp_path_factory.mktemp("onnx") / "vision.onnx"
    vision_onnx.export_fp32(encoder, ckpt.preprocess.size, path)
    return ckpt, clip, proj, path


def test_fp32_graph_matches_torch(exported):
    ckpt, clip, proj, path = exported
    pixels = _pixels(ckpt)
    ref = reference_features(clip, proj, torch.from_numpy(pixels), ckpt.feature_layer, ckpt.drop_cls).numpy()
    out = vision_onnx.run_onnx(path, pixels)
    assert out.shape == (3, 16, 256) == ref.shape
    assert np.abs(out - ref).max() <= 1e-4
    # dynamic batch axis: one image alone gives the same rows
    np.testing.assert_allclose(vision_onnx.run_onnx(path, pixels[1:2])[0], out[1], atol=1e-5)


def test_graph_metadata(exported):
    *_, path = exported
    model = onnx.load(str(path))
    assert model.ir_version <= 13
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in model.graph.input] == ["pixel_values"]
    assert [o.name for o in model.graph.output] == ["image_embeds"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 56, 56]


def test_fp16_and_int8_variants(exported, tmp_path):
    ckpt, _, _, path = exported
    pixels = _pixels(ckpt)
    fp32 = vision_onnx.run_onnx(path, pixels)
    fp16 = vision_onnx.run_onnx(vision_onnx.make_fp16(path, tmp_path / "fp16.onnx"), pixels)
    assert fp16.dtype == np.float32 and vision_onnx.cosine(fp16, fp32) > 0.999
    cos = vision_onnx.make_int8(path, tmp_path / "int8.onnx", pixels)
    assert cos >= vision_onnx.INT8_MIN_COSINE and (tmp_path / "int8.onnx").is_file()
    assert onnx.load(str(tmp_path / "int8.onnx")).ir_version <= 13


def test_int8_gate_refuses_to_write(exported, tmp_path):
    ckpt, _, _, path = exported
    with pytest.raises(vision_onnx.Int8Rejected, match="--vision-dtype"):
        vision_onnx.make_int8(path, tmp_path / "int8.onnx", _pixels(ckpt), min_cosine=1.01)
    assert not (tmp_path / "int8.onnx").exists()


def test_fused_graph_matches_and_uses_contrib_ops(exported, tmp_path):
    """ORT's transformer fusions: one Attention per layer, SkipLayerNorm, QuickGelu; same output, IR ≤ 13."""
    import shutil
    from collections import Counter

    ckpt, clip, proj, path = exported
    pixels = _pixels(ckpt)
    fused = tmp_path / "vision.onnx"
    shutil.copyfile(path, fused)
    vc = ckpt.vision_config
    report = vision_onnx.fuse_fp32(fused, vc.num_attention_heads, vc.hidden_size, pixels)
    assert report["fused"] and report["max_abs_vs_plain"] <= 1e-5 and report["domains"] == ["ai.onnx", "com.microsoft"]
    model = onnx.load(str(fused))
    ops = Counter(n.op_type for n in model.graph.node if n.domain == "com.microsoft")
    n_layers = len(clip.encoder.layers) - 1  # the graph stops at layer -2
    assert ops["Attention"] == n_layers and ops["QuickGelu"] == n_layers and ops["SkipLayerNormalization"] >= 1
    assert "Softmax" not in {n.op_type for n in model.graph.node}  # attention is one kernel, not MatMul/Softmax
    assert model.ir_version <= 13
    ref = reference_features(clip, proj, torch.from_numpy(pixels), ckpt.feature_layer, ckpt.drop_cls).numpy()
    out = vision_onnx.run_onnx(fused, pixels)
    assert np.abs(out - ref).max() <= 1e-4
    np.testing.assert_allclose(vision_onnx.run_onnx(fused, pixels[2:3])[0], out[2], atol=1e-5)  # dynamic batch
    # the runtime loads it as it loads any bundle graph (ORT_ENABLE_ALL, CPU provider)
    from llava_local.manifest import VisionSpec
    from llava_local.vision import VisionEncoder

    spec = VisionSpec(files={"fp32": "vision.onnx"}, default="fp32", tokens_per_image=16, embed_dim=256)
    np.testing.assert_allclose(VisionEncoder(fused, spec, device="cpu").encode(pixels), out, atol=1e-5)


def test_fusion_that_changes_the_output_is_not_kept(exported, tmp_path, monkeypatch):
    import shutil

    ckpt, _, _, path = exported
    plain = tmp_path / "vision.onnx"
    shutil.copyfile(path, plain)
    before = plain.read_bytes()
    monkeypatch.setattr(vision_onnx, "FUSE_MAX_ABS", -1.0)  # no fused graph can pass
    vc = ckpt.vision_config
    report = vision_onnx.fuse_fp32(plain, vc.num_attention_heads, vc.hidden_size, _pixels(ckpt))
    assert not report["fused"] and plain.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vision.onnx"]
