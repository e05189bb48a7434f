"""`llava-local convert` end to end: bundles of all three layouts, parity, atomic output, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from converters import bundle as bundle_mod
from converters import llm_gguf
from converters.bundle import ConvertOptions, convert
from llava_local.cli import main
from llava_local.errors import ConversionError
from llava_local.manifest import load_manifest, verify_files


def test_tiny_bundle_manifest_and_parity(tiny_bundle):
    m = load_manifest(tiny_bundle)
    verify_files(tiny_bundle, m)
    assert sorted(p.name for p in tiny_bundle.iterdir()) == [
        "llm-f16.gguf", "llm-q8_0.gguf", "manifest.json", "vision.onnx"]
    assert m.llm.files == {"f16": "llm-f16.gguf", "q8_0": "llm-q8_0.gguf"} and m.llm.default == "f16"
    assert m.vision.files == {"fp32": "vision.onnx"} and (m.vision.tokens_per_image, m.vision.embed_dim) == (16, 256)
    assert (m.preprocess.mode, m.preprocess.size, m.template, m.stop_strings) == ("pad", 56, "vicuna_v1", ("</s>",))
    assert m.llm.context_length == 1024 and m.name == "tiny"
    assert m.provenance["layout"] == "llava-hf" and m.provenance["converter"].startswith("llava-local ")
    fusion = m.provenance["vision_fusion"]  # the shipped fp32 graph is fused by default and still passes parity
    assert fusion["fused"] and fusion["ops"]["Attention"] == 2 and fusion["max_abs_vs_plain"] <= 1e-5
    p = m.parity
    assert p["verified"] and p["vision"]["fp32"]["max_abs"] <= 1e-4 and p["vision"]["fp32"]["cosine"] > 0.99999
    assert len(p["torch_answer"]) == p["n_tokens"] == 16
    for quant in ("f16", "q8_0"):
        r = p["llm"][quant]
        assert r["prompt_ids_equal"] and r["text_prompt_ids_equal"]
        # greedy continuation of image + prompt (EOS suppressed), image rows from the ONNX graph
        assert r["answer"] == p["torch_answer"], quant
    assert p["llm"]["f16"]["top1_agreement"] >= 0.98
    # the runtime's own path (open_model + ChatSession, stops at EOS) was checked during the conversion
    assert p["llm"]["f16"]["runtime_answer_equal"] and p["llm"]["f16"]["runtime_text"] == p["torch_text"] != ""
    assert "runtime_text" not in p["llm"]["q8_0"]


def test_runtime_answers_like_transformers(tiny_bundle, tiny_hf_checkpoint, tiny_image):
    """The bundle through the runtime's public API gives transformers' greedy answer for the same image."""
    import torch
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    from llava_local import ChatSession, GenerationConfig, RuntimeConfig, open_model
    from llava_local.events import Finished, TextChunk
    from llava_local.preprocess import preprocess
    from llava_local.templates import Turn, get_template, text_chunks

    question, n = "What is in the image?", 12
    m = load_manifest(tiny_bundle)
    tok = AutoTokenizer.from_pretrained(tiny_hf_checkpoint)
    hf = LlavaForConditionalGeneration.from_pretrained(tiny_hf_checkpoint).eval()
    before, after = text_chunks(get_template(m.template).render([Turn("user", question, n_images=1)]))
    ids = tok(before).input_ids + [hf.config.image_token_id] * 16 + tok(after, add_special_tokens=False).input_ids
    pixels = torch.from_numpy(preprocess(tiny_image, m.preprocess))
    with torch.no_grad():
        out = hf.generate(input_ids=torch.tensor([ids]), pixel_values=pixels, max_new_tokens=n, do_sample=False,
                          eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    want = tok.decode(out[0, len(ids):], skip_special_tokens=True)
    session = ChatSession(open_model(str(tiny_bundle), RuntimeConfig(device="cpu")),
                          generation=GenerationConfig(temperature=0, max_tokens=n))
    events = list(session.ask(question, images=[str(tiny_image)]))
    got = "".join(e.text for e in events if isinstance(e, TextChunk))
    assert isinstance(events[-1], Finished) and got.strip() == want.strip() and want.strip()


def test_original_layout_converts_with_f32(tiny_original_checkpoint, tmp_path, capsys):
    out = tmp_path / "orig-bundle"
    assert main(["convert", str(tiny_original_checkpoint), "-o", str(out), "--quant", "f32", "--no-fuse-vision",
                 "--suggest", "What is in the image?", "--suggest", "How many shapes are there?"]) == 0
    captured = capsys.readouterr()
    assert "fuse" not in captured.err
    assert captured.out.strip() == str(out.resolve())
    assert "convert [1/" in captured.err and "verify against torch done" in captured.err  # progress lines
    m = load_manifest(out)
    p = m.parity
    assert m.provenance["layout"] == "original" and m.provenance["vision_tower"].endswith("clip")
    assert m.suggested_prompts == ("What is in the image?", "How many shapes are there?")
    assert "vision_fusion" not in m.provenance
    assert p["vision"]["fp32"]["max_abs"] <= 1e-4
    assert p["llm"]["f32"]["answer"] == p["torch_answer"] and p["llm"]["f32"]["prompt_ids_equal"]


def test_layout_c_with_all_vision_variants(tiny_c_checkpoint, tmp_path):
    out = tmp_path / "c-bundle"
    argv = ["convert", str(tiny_c_checkpoint), "-o", str(out), "--quant", "f16", "--quant", "q4_k_m",
            "--vision-dtype", "fp16", "--vision-dtype", "int8", "--name", "c", "--quiet"]
    assert main(argv) == 0
    m = load_manifest(out)
    verify_files(out, m)
    assert m.vision.files == {"fp32": "vision.onnx", "fp16": "vision-fp16.onnx", "int8": "vision-int8.onnx"}
    assert m.vision.default == "fp16" and m.llm.default == "f16" and set(m.llm.files) == {"f16", "q4_k_m"}
    assert (m.template, m.preprocess.mode, m.provenance["projector"]) == ("llava_v1", "crop", "linear")
    p = m.parity
    assert p["int8_gate"]["written"] and p["vision"]["int8"]["cosine"] >= 0.99
    assert p["vision"]["fp16"]["cosine"] >= 0.999 and p["vision"]["fp32"]["max_abs"] <= 1e-4
    assert p["llm"]["f16"]["answer"] == p["torch_answer"] and p["llm"]["q4_k_m"]["prompt_ids_equal"]


@pytest.mark.parametrize("stage", ["vision", "gguf", "quantize-q8_0", "verify", "manifest"])
def test_failed_step_leaves_no_bundle(stage, tiny_hf_checkpoint, tmp_path):
    out = tmp_path / "models" / "b"

    def hook(name: str) -> None:
        if name == stage:
            raise RuntimeError(f"killed during {name}")

    with pytest.raises(RuntimeError, match="killed during"):
        convert(ConvertOptions(src=tiny_hf_checkpoint, out=out, quants=("f16", "q8_0"), verify=stage == "verify"),
                show_progress=False, step_hook=hook)
    assert not out.exists()
    assert list(out.parent.iterdir()) == []  # the temporary .b.partial-* directory is gone too


def test_existing_output_is_refused_then_replaced_with_force(tiny_hf_checkpoint, tmp_path, capsys):
    out = tmp_path / "b"
    out.mkdir()
    (out / "manifest.json").write_text("{}")  # a previous bundle: the only kind --force replaces
    (out / "keep.txt").write_text("mine")
    argv = ["convert", str(tiny_hf_checkpoint), "-o", str(out), "--quant", "f16", "--no-verify", "--quiet"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "--force" in err and err.count("\n") == 1 and (out / "keep.txt").exists()
    assert main([*argv, "--force"]) == 0
    assert not (out / "keep.txt").exists() and load_manifest(out).parity == {"verified": False}
    assert [p.name for p in out.parent.iterdir()] == ["b"]


def test_default_output_is_the_models_dir(tiny_hf_checkpoint, llava_home, capsys):
    assert main(["convert", str(tiny_hf_checkpoint), "--quant", "f16", "--no-verify", "--quiet"]) == 2
    assert "--name" in capsys.readouterr().err
    import logging

    level = logging.getLogger().level
    assert main(["convert", str(tiny_hf_checkpoint), "--name", "mine", "--quant", "f16", "--no-verify",
                 "--quiet"]) == 0
    assert load_manifest(llava_home / "models" / "mine").name == "mine"
    assert logging.getLogger().level == level  # the in-process CLI leaves logging as it found it


def test_broken_parity_exits_nonzero(tiny_hf_checkpoint, tmp_path, monkeypatch, capsys):
    """A converter bug (here: q/k not permuted for llama.cpp's RoPE) is caught and nothing is published."""
    monkeypatch.setattr(llm_gguf, "permute", lambda w, n_head, n_kv: w)
    out = tmp_path / "bad"
    assert main(["convert", str(tiny_hf_checkpoint), "-o", str(out), "--quant", "f32", "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("llava-local: error: parity check failed: llm f32") and "\n" not in err
    assert not out.exists()


def _write_original_without_clip(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**cfg, "mm_vision_tower": str(dst.parent / "no-such-clip")}))
    return dst


@pytest.mark.parametrize("case", ["missing", "not-a-checkpoint", "a-file", "missing-clip", "bad-vision-tower"])
def test_bad_inputs_give_one_line_errors(case, tiny_original_checkpoint, tmp_path, capsys):
    src = tmp_path / "src"
    extra: list[str] = []
    if case == "not-a-checkpoint":
        src.mkdir()
        (src / "notes.txt").write_text("hello")
    elif case == "a-file":
        src.write_text("hello")
    elif case == "missing-clip":
        src = _write_original_without_clip(tiny_original_checkpoint, src)
    elif case == "bad-vision-tower":
        src, extra = tiny_original_checkpoint, ["--vision-tower", str(tmp_path / "nowhere")]
    rc = main(["convert", str(src), "-o", str(tmp_path / "out"), "--quiet", *extra])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("llava-local: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    expected = {"missing": "not found", "not-a-checkpoint": "not a checkpoint", "a-file": "not a directory",
                "missing-clip": "--vision-tower", "bad-vision-tower": "--vision-tower"}[case]
    assert expected in err
    assert not (tmp_path / "out").exists()


def test_options_validate_names():
    with pytest.raises(ConversionError, match="q4_k_m"):
        ConvertOptions(src=Path("x"), out=Path("y"), quants=("q9",))
    with pytest.raises(ConversionError, match="--suggest: each suggested prompt must be one printable line"):
        ConvertOptions(src=Path("x"), out=Path("y"), suggested_prompts=("two\nlines",))
    assert bundle_mod.llm_file("q8_0") == "llm-q8_0.gguf"


def test_missing_extra_is_one_line(tiny_hf_checkpoint, tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    assert main(["convert", str(tiny_hf_checkpoint), "-o", str(tmp_path / "b")]) == 1
    assert capsys.readouterr().err == "llava-local: error: convert needs gguf: pip install 'llava-local[convert]'\n"
