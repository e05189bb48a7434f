"""`llava-local import`: a llama.cpp GGUF + mmproj pair becomes a bundle that behaves like `convert`'s."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from interop_helpers import rewrite_gguf

from llava_local.cli import main
from llava_local.manifest import load_manifest, verify_files

QUESTION = "What is in the image?"


def embeddings(bundle: Path, image: Path) -> np.ndarray:
    from converters.vision_onnx import run_onnx
    from llava_local.preprocess import preprocess

    m = load_manifest(bundle)
    return run_onnx(bundle / m.vision.files[m.vision.default], preprocess(image, m.preprocess))


def answer(bundle: Path, image: Path, n: int = 12) -> str:
    from llava_local import ChatSession, GenerationConfig, RuntimeConfig, open_model
    from llava_local.events import TextChunk

    with open_model(str(bundle), RuntimeConfig(device="cpu", embedding_cache=False)) as model:
        session = ChatSession(model, generation=GenerationConfig(temperature=0, max_tokens=n))
        return "".join(e.text for e in session.ask(QUESTION, images=[str(image)]) if isinstance(e, TextChunk))


@pytest.fixture(scope="module")
def imported(legacy_pair, tmp_path_factory) -> tuple[Path, str]:
    """The legacy pair imported through the CLI (its stderr kept for the note-line test)."""
    import contextlib
    import io

    llm, mmproj = legacy_pair
    out = tmp_path_factory.mktemp("imported") / "tiny-imported"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["import", str(llm), "--mmproj", str(mmproj), "-o", str(out), "--vision-dtype", "fp32",
                     "--vision-dtype", "int8"]) == 0
    return out, err.getvalue()


def test_import_matches_convert(imported, f16_bundle, legacy_pair, tiny_image):
    bundle, _ = imported
    m = load_manifest(bundle)
    verify_files(bundle, m)
    assert sorted(p.name for p in bundle.iterdir()) == ["llm-f16.gguf", "manifest.json", "vision-int8.onnx",
                                                         "vision.onnx"]
    assert (m.template, m.preprocess.mode, m.preprocess.size, m.stop_strings) == ("vicuna_v1", "pad", 56, ("</s>",))
    assert (m.vision.tokens_per_image, m.vision.embed_dim, m.llm.files, m.llm.context_length) == (
        16, 256, {"f16": "llm-f16.gguf"}, 1024)
    # the LLM GGUF goes in as it is: the same inode (hard link) as the source file
    assert os.stat(bundle / "llm-f16.gguf").st_ino == os.stat(legacy_pair[0]).st_ino
    p = m.parity
    assert p["verified"] and p["vision"]["fp32"]["max_abs"] <= 1e-4 and p["int8_gate"]["written"]
    assert p["prompt"]["bos_first"] and p["prompt"]["stop_ids"] == {"</s>": [2]} and p["answer"]["text"]
    assert m.provenance["vision_fusion"]["fused"]
    # the same image embeddings as convert's bundle of the same (f16-exact) checkpoint, and the same answer
    delta = np.abs(embeddings(bundle, tiny_image) - embeddings(f16_bundle, tiny_image)).max()
    assert delta <= 1e-3, delta
    want = answer(f16_bundle, tiny_image)
    assert want and answer(bundle, tiny_image) == want


def test_import_says_what_it_assumed_in_one_line(imported, legacy_pair, tmp_path, capsys):
    _, err = imported
    notes = [ln for ln in err.splitlines() if ln.startswith("import:")]
    # the template came from tokenizer.chat_template; nothing in the mmproj says pad or crop
    assert notes == ["import: nothing in the files says the preprocessing pad: using LLaVA-1.5's "
                     "(pass --template / --preprocess to choose)"]
    bare = rewrite_gguf(legacy_pair[0], tmp_path / "bare.gguf", drop=("tokenizer.chat_template",))
    out = tmp_path / "b"
    assert main(["import", str(bare), "--mmproj", str(legacy_pair[1]), "-o", str(out), "--no-verify", "--quiet",
                 "--preprocess", "crop", "--no-fuse-vision"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == ["import: nothing in the files says the template vicuna_v1: using LLaVA-1.5's "
                   "(pass --template / --preprocess to choose)"]
    m = load_manifest(out)
    assert (m.template, m.preprocess.mode, m.parity["verified"]) == ("vicuna_v1", "crop", False)


def test_our_own_keys_identify_template_and_preprocessing(legacy_pair, f16_bundle, tmp_path, capsys):
    """A GGUF saying llava_local.template and an mmproj saying llava_local.preprocess need no guess."""
    from converters.import_gguf import detect_template
    from converters.llm_gguf import jinja_template

    llm = rewrite_gguf(f16_bundle / "llm-f16.gguf", tmp_path / "llm.gguf", drop=("tokenizer.chat_template",),
                       set_={"llava_local.template": "llava_v1"})
    mm = rewrite_gguf(legacy_pair[1], tmp_path / "mm.gguf", set_={"llava_local.preprocess": "crop"})
    out = tmp_path / "c"
    assert main(["import", str(llm), "--mmproj", str(mm), "-o", str(out), "--no-verify", "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    m = load_manifest(out)
    assert (m.template, m.preprocess.mode) == ("llava_v1", "crop")
    for name in ("vicuna_v1", "chatml"):
        assert detect_template(jinja_template(name)) == name
    assert detect_template("{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}") == "llama_2"
    llava_hf = ("{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
                "{% endif %}{# Render all images first #}{% for content in message['content'] | selectattr('type', "
                "'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}{% endfor %}{% if add_generation_prompt %}"
                "{{ 'ASSISTANT:' }}{% endif %}")
    assert detect_template(llava_hf) == "vicuna_v1" and detect_template("{{ .Prompt }}") is None


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir()) if parent.exists() else []


@pytest.fixture(scope="module")
def bad_files(legacy_pair, f16_checkpoint, tmp_path_factory) -> dict[str, Path]:
    from converters.layouts import load_checkpoint
    from converters.mmproj import write_mmproj

    d = tmp_path_factory.mktemp("bad")
    ck = load_checkpoint(f16_checkpoint)
    ck.projector_state = {k: (v[:128] if k.startswith("linear_2") else v) for k, v in ck.projector_state.items()}
    narrow = write_mmproj(ck, d / "mmproj-narrow.gguf")
    data = legacy_pair[1].read_bytes()
    (d / "mmproj-truncated.gguf").write_bytes(data[: len(data) // 2])
    (d / "llm-truncated.gguf").write_bytes(legacy_pair[0].read_bytes()[:4096])
    (d / "not-gguf.gguf").write_bytes(b"PK\x03\x04 not a gguf at all")
    ldp = rewrite_gguf(legacy_pair[1], d / "mmproj-ldp.gguf", set_={"clip.projector_type": "ldp"})
    next_ = rewrite_gguf(legacy_pair[1], d / "mmproj-next.gguf",
                         set_={"clip.vision.mm_patch_merge_type": "spatial_unpad"})
    return {"narrow": narrow, "truncated": d / "mmproj-truncated.gguf", "llm_truncated": d / "llm-truncated.gguf",
            "ldp": ldp, "not_gguf": d / "not-gguf.gguf", "next": next_}


@pytest.mark.parametrize("case,expect", [
    ("narrow", "outputs image rows of width 128 but tiny-llava-f16.gguf takes 256 (n_embd): the files are not a pair"),
    ("text_only", "is a llama model GGUF, not an mmproj (image encoder); pass the mmproj-*.gguf file to --mmproj"),
    ("mmproj_as_llm", "is an mmproj (image encoder), not a language model; pass it with --mmproj"),
    ("truncated", "cannot read this GGUF (truncated or corrupt?"),
    ("llm_truncated", "cannot read this GGUF (truncated or corrupt?"),
    ("not_gguf", "is not a GGUF file (it starts with b'PK\\x03\\x04'"),
    ("ldp", "projector type 'ldp' is not supported"),
    ("next", "a LLaVA-1.6 (NeXT) mmproj (image grid, spatial_unpad)"),
    ("missing", "the --mmproj file does not exist"),
])
def test_bad_input_is_one_line_and_leaves_nothing(case, expect, legacy_pair, bad_files, tmp_path, capsys):
    llm, mmproj = legacy_pair
    pair = {"text_only": (llm, llm), "mmproj_as_llm": (mmproj, mmproj),
            "llm_truncated": (bad_files["llm_truncated"], mmproj),
            "missing": (llm, tmp_path / "nowhere" / "mmproj.gguf")}.get(case) or (llm, bad_files.get(case))
    parent = tmp_path / "out"
    parent.mkdir()
    code = main(["import", str(pair[0]), "--mmproj", str(pair[1]), "-o", str(parent / "bundle")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and expect in err[0], err
    assert "Traceback" not in err[0]
    assert _leftovers(parent) == []  # no bundle, no .partial directory


def test_failure_midway_leaves_nothing(legacy_pair, tmp_path):
    from converters.import_gguf import ImportOptions, import_pair

    parent = tmp_path / "out"
    parent.mkdir()

    def fail_at(step: str) -> None:
        if step == "verify":
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        import_pair(ImportOptions(source=legacy_pair[0], mmproj=legacy_pair[1], out=parent / "b"),
                    show_progress=False, step_hook=fail_at)
    assert _leftovers(parent) == []


def test_any_llamacpp_file_type_imports_and_quant_requantizes_only_unquantized(legacy_pair, tmp_path, capsys):
    """A community Q4_K_S file goes in as it is (manifest key q4_k_s); --quant re-quantizes an F16 source and
    refuses an already quantized one."""
    import ctypes

    import llama_cpp

    from converters.quantize import tensor_types

    llm, mmproj = legacy_pair
    q4ks = tmp_path / "tiny.Q4_K_S.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_S
    assert llama_cpp.llama_model_quantize(str(llm).encode(), str(q4ks).encode(), ctypes.byref(params)) == 0
    a = tmp_path / "a"
    assert main(["import", str(q4ks), "--mmproj", str(mmproj), "-o", str(a), "--quiet", "--no-fuse-vision"]) == 0
    m = load_manifest(a)
    assert m.llm.files == {"q4_k_s": "llm-q4_k_s.gguf"} and m.parity["answer"]["text"]
    b = tmp_path / "b"
    assert main(["import", str(llm), "--mmproj", str(mmproj), "-o", str(b), "--quant", "q8_0", "--quiet",
                 "--no-verify", "--no-fuse-vision"]) == 0
    assert load_manifest(b).llm.files == {"q8_0": "llm-q8_0.gguf"} and tensor_types(b / "llm-q8_0.gguf")["Q8_0"]
    capsys.readouterr()
    assert main(["import", str(q4ks), "--mmproj", str(mmproj), "-o", str(tmp_path / "c"), "--quant", "q8_0"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is already quantized (q4_k_s)" in err[0] and not (tmp_path / "c").exists()
