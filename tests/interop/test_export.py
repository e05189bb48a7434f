"""`llava-local export --format llama.cpp`: mmproj + GGUF + Modelfile that import back to the same model and that
llama.cpp's own libmtmd loads and runs (with its known LLaVA graph differences, measured and explained)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_import import answer, embeddings

from llava_local.cli import main
from llava_local.manifest import load_manifest


@pytest.fixture(scope="module")
def exported(f16_bundle, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "llamacpp"
    assert main(["export", str(f16_bundle), "--format", "llama.cpp", "-o", str(out)]) == 0
    return out


def test_export_files_and_modelfile(exported):
    assert sorted(p.name for p in exported.iterdir()) == ["Modelfile", "export.json", "mmproj-model-f16.gguf",
                                                          "tiny16-f16.gguf"]
    lines = (exported / "Modelfile").read_text().splitlines()
    assert lines[:2] == ["FROM ./tiny16-f16.gguf", "FROM ./mmproj-model-f16.gguf"]
    assert lines[2].startswith("TEMPLATE ") and "ASSISTANT:" in lines[2] and "PARAMETER stop </s>" in lines
    report = json.loads((exported / "export.json").read_text())
    assert report["kind"] == "bundle" and "source checkpoint" in report["mmproj"]
    # the mmproj, rebuilt as ONNX, reproduces the bundle's own vision graph (f16-exact weights)
    assert report["vision_vs_bundle"]["max_abs"] <= 1e-3


def test_round_trip_export_import_same_embeddings_and_answer(exported, f16_bundle, tmp_path, tiny_image, capsys):
    """The export folder imported back (LM Studio-style folder through converters.sources) is the same model."""
    out = tmp_path / "back"
    assert main(["import", str(exported), "-o", str(out), "--quiet"]) == 0
    assert capsys.readouterr().err == ""  # our own keys said the template and the preprocessing
    m = load_manifest(out)
    assert (m.template, m.preprocess, m.provenance["origin"]) == ("vicuna_v1", load_manifest(f16_bundle).preprocess,
                                                                  "lmstudio")
    assert np.abs(embeddings(out, tiny_image) - embeddings(f16_bundle, tiny_image)).max() <= 1e-3
    want = answer(f16_bundle, tiny_image)
    assert want and answer(out, tiny_image) == want


def _libmtmd_available() -> bool:
    try:
        from llama_cpp import mtmd_cpp  # noqa: F401  (loads libmtmd)
    except (ImportError, OSError, FileNotFoundError):
        return False
    return True


@pytest.mark.skipif(not _libmtmd_available(), reason="this llama-cpp-python has no libmtmd")
def test_exported_mmproj_runs_in_libmtmd(exported, tiny_image, tmp_path):
    """libmtmd loads our mmproj and encodes an image; its output is what its LLaVA graph computes (CLS appended
    last, patch 0 dropped, tanh GELU), not what LLaVA computes: measured against both."""
    from PIL import Image

    from converters.export_llamacpp import mtmd_embeddings
    from converters.mmproj import read_mmproj
    from converters.mmproj_onnx import reference_forward
    from converters.vision_onnx import cosine
    from llava_local.preprocess import preprocess

    mm = read_mmproj(exported / "mmproj-model-f16.gguf")
    s = mm.spec.image_size
    rgb = np.asarray(Image.open(tiny_image).convert("RGB").resize((s, s)))  # square: mtmd's own pad is a no-op
    got = mtmd_embeddings(exported / "mmproj-model-f16.gguf", exported / "tiny16-f16.gguf", rgb)
    assert got.shape == (16, 256) and np.isfinite(got).all()
    pixels = preprocess(Image.fromarray(rgb), load_manifest_from(exported).preprocess)
    llava = reference_forward(mm, pixels)[0]
    quirks = reference_forward(mm, pixels, mtmd=True)[0]
    assert np.abs(got - quirks).max() <= 5e-3 * max(1.0, float(np.abs(quirks).max()))  # F16 matmuls in ggml
    assert cosine(got[None], llava[None]) < 0.9  # the CLS-order bug moves every token
    # A community file names no feature layer: mtmd then also runs one block fewer than the file holds.
    from interop_helpers import rewrite_gguf

    bare = rewrite_gguf(exported / "mmproj-model-f16.gguf", tmp_path / "mmproj-bare.gguf",
                        drop=("clip.vision.feature_layer", "llava_local."))
    got = mtmd_embeddings(bare, exported / "tiny16-f16.gguf", rgb)
    short = reference_forward(read_mmproj(bare), pixels, mtmd=True)[0]
    assert np.abs(got - short).max() <= 5e-3 * max(1.0, float(np.abs(short).max()))
    assert np.abs(short - quirks).max() > 1e-2  # ...which is a different output


def load_manifest_from(exported: Path):
    class _M:  # the preprocessing an import of the export folder would record
        from llava_local.preprocess import PreprocessConfig

        preprocess = PreprocessConfig(mode="pad", size=56)

    return _M


def test_export_of_an_imported_bundle_copies_its_mmproj(legacy_pair, tmp_path):
    """No torch needed: an imported bundle exports the mmproj it came from, byte for byte."""
    b, out = tmp_path / "b", tmp_path / "x"
    assert main(["import", str(legacy_pair[0]), "--mmproj", str(legacy_pair[1]), "-o", str(b), "--no-verify",
                 "--quiet", "--no-fuse-vision"]) == 0
    assert main(["export", str(b), "-o", str(out)]) == 0
    assert (out / "mmproj-model-f16.gguf").read_bytes() == legacy_pair[1].read_bytes()
    assert (out / "b-f16.gguf").read_bytes() == legacy_pair[0].read_bytes()


def test_export_without_a_source_is_one_line(legacy_pair, tmp_path, capsys):
    import shutil

    src = tmp_path / "mm.gguf"
    shutil.copy(legacy_pair[1], src)
    b = tmp_path / "b"
    assert main(["import", str(legacy_pair[0]), "--mmproj", str(src), "-o", str(b), "--no-verify", "--quiet",
                 "--no-fuse-vision"]) == 0
    src.unlink()
    capsys.readouterr()
    assert main(["export", str(b), "-o", str(tmp_path / "x")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "its source" in err[0] and "is gone" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_export_from_checkpoint(f16_checkpoint, exported, tmp_path):
    """A checkpoint exports straight away: its mmproj holds the same tensors as the bundle export's, and its GGUF
    is the one `convert` writes (F16), named after --name."""
    import gguf

    out = tmp_path / "ck"
    assert main(["export", str(f16_checkpoint), "-o", str(out), "--name", "tiny"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "export.json", "mmproj-model-f16.gguf",
                                                     "tiny-f16.gguf"]
    a = {t.name: t.data.tobytes() for t in gguf.GGUFReader(str(out / "mmproj-model-f16.gguf")).tensors}
    b = {t.name: t.data.tobytes() for t in gguf.GGUFReader(str(exported / "mmproj-model-f16.gguf")).tensors}
    assert a == b
    assert json.loads((out / "export.json").read_text())["kind"] == "checkpoint"


def test_export_force_replaces_an_earlier_export_but_never_its_source(legacy_pair, tmp_path, capsys):
    """--force replaces what export wrote before (export.json), and an -o onto the bundle itself is refused even with
    --force (it used to swap the source bundle away and delete it)."""
    b, out = tmp_path / "b", tmp_path / "x"
    assert main(["import", str(legacy_pair[0]), "--mmproj", str(legacy_pair[1]), "-o", str(b), "--no-verify",
                 "--quiet", "--no-fuse-vision"]) == 0
    before = sorted(p.name for p in b.iterdir())
    assert main(["export", str(b), "-o", str(out)]) == 0
    assert main(["export", str(b), "-o", str(out), "--force"]) == 0  # an earlier export: replaced
    capsys.readouterr()
    assert main(["export", str(b), "-o", str(b), "--force"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the source" in err[0], err
    assert sorted(p.name for p in b.iterdir()) == before  # the bundle is untouched
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert main(["export", str(b), "-o", str(tmp_path / "other"), "--force"]) == 1  # not an export: left alone
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_import_onto_its_own_source_is_refused(legacy_pair, tmp_path, capsys):
    import shutil

    d = tmp_path / "pair"
    d.mkdir()
    llm, mm = shutil.copy(legacy_pair[0], d / "llm.gguf"), shutil.copy(legacy_pair[1], d / "mmproj.gguf")
    (d / "manifest.json").write_text("{}")  # looks like a bundle, so --force alone would have replaced it
    capsys.readouterr()
    assert main(["import", str(llm), "--mmproj", str(mm), "-o", str(d), "--force", "--quiet"]) == 1
    assert "the source" in capsys.readouterr().err
    assert Path(llm).is_file() and Path(mm).is_file()


def test_modelfile_system_prompt_stands_outside_the_template():
    from converters.sources import render_modelfile

    for template in ("chatml", "vicuna_v1"):
        text = render_modelfile("llm.gguf", "mmproj.gguf", template, ["</s>"], {}, system="You are terse.")
        before, system_line, _ = text.partition("\nSYSTEM You are terse.\n")
        assert system_line and "SYSTEM" not in before, text
        # the TEMPLATE value is closed before it: its triple quotes (multi-line) come in pairs
        assert before.count('"""') % 2 == 0, text


def test_quantize_refuses_an_unknown_name(tmp_path):
    from converters.quantize import quantize
    from llava_local.errors import ConversionError

    with pytest.raises(ConversionError, match="unknown quantization 'q9_z'"):
        quantize(tmp_path / "in.gguf", tmp_path / "out.gguf", "q9_z")
