"""Import from where people keep these files: Ollama's store (laid out as Ollama lays it out) and an LM Studio
folder (`models/PUBLISHER/MODEL/` with one GGUF and one mmproj), resolved by `converters.sources`."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
from ollama_store import MEDIA, blob, write_model
from test_import import embeddings

from llava_local.cli import main
from llava_local.manifest import load_manifest


def test_import_from_ollama_store(legacy_pair, f16_bundle, tmp_path, monkeypatch, tiny_image, capsys):
    from converters.sources import GO_TEMPLATES
    from llava_local.templates import LLAVA_V1_SYSTEM

    store = tmp_path / "ollama" / "models"
    layers = {"model": legacy_pair[0].read_bytes(), "projector": legacy_pair[1].read_bytes(),
              "template": GO_TEMPLATES["llava_v1"].encode(), "system": LLAVA_V1_SYSTEM.encode(),
              "params": json.dumps({"stop": ["</s>", "USER:"], "num_ctx": 2048}).encode()}
    write_model(store, "tiny-llava", "7b", layers, config=b"{}")
    monkeypatch.setenv("OLLAMA_MODELS", str(store))
    assert main(["import", "ollama:tiny-llava:7b", "--quiet", "--no-fuse-vision", "--vision-dtype", "fp16"]) == 0
    from llava_local.paths import models_dir

    out = models_dir() / "tiny-llava-7b"  # no -o / --name: the models dir under the source's own name
    assert [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("import:")] == [
        "import: nothing in the files says the preprocessing pad: using LLaVA-1.5's (pass --template / --preprocess "
        "to choose)"]
    m = load_manifest(out)
    # Ollama's TEMPLATE + SYSTEM say llava_v1; its stop parameters join the template's
    assert (m.template, m.system_prompt, m.stop_strings) == ("llava_v1", LLAVA_V1_SYSTEM, ("</s>", "USER:"))
    assert m.provenance["origin"] == "ollama" and m.provenance["ollama_params"]["num_ctx"] == 2048
    model_blob = store / "blobs" / ("sha256-" + hashlib.sha256(layers["model"]).hexdigest())
    assert os.stat(out / "llm-f16.gguf").st_ino == os.stat(model_blob).st_ino  # the blob, hard-linked
    assert np.abs(embeddings(out, tiny_image) - embeddings(f16_bundle, tiny_image)).max() <= 1e-3
    assert m.parity["verified"] and m.parity["answer"]["text"]
    assert m.vision.default == "fp16" and m.parity["vision"]["fp16"]["cosine"] > 0.999  # fp16 checked too
    # exported again, the Modelfile carries Ollama's system text and parameters back
    assert main(["export", str(out), "-o", str(tmp_path / "again")]) == 0
    modelfile = (tmp_path / "again" / "Modelfile").read_text().splitlines()
    assert f"SYSTEM {LLAVA_V1_SYSTEM}" in modelfile and "PARAMETER num_ctx 2048" in modelfile
    assert modelfile.count("PARAMETER stop </s>") == 1 and "PARAMETER stop USER:" in modelfile


def test_import_from_lm_studio_folder(legacy_pair, f16_bundle, tmp_path, tiny_image):
    folder = tmp_path / "lmstudio" / "models" / "someone" / "tiny-llava-GGUF"
    folder.mkdir(parents=True)
    os.link(legacy_pair[0], folder / "tiny-llava.Q8_0-or-whatever.gguf")
    os.link(legacy_pair[1], folder / "mmproj-tiny-llava-f16.gguf")
    out = tmp_path / "from-lmstudio"
    assert main(["import", str(folder), "-o", str(out), "--quiet", "--no-verify", "--no-fuse-vision"]) == 0
    m = load_manifest(out)
    assert m.provenance["origin"] == "lmstudio" and m.provenance["mmproj"].endswith("mmproj-tiny-llava-f16.gguf")
    assert np.abs(embeddings(out, tiny_image) - embeddings(f16_bundle, tiny_image)).max() <= 1e-3


def test_ollama_template_of_another_layout_is_read_as_go(legacy_pair, tmp_path, monkeypatch, capsys):
    """The Go TEMPLATE of Ollama's store names the layout (here plain): read as Go text, never "assumed"."""
    from converters.sources import GO_TEMPLATES

    store = tmp_path / "ollama"
    layers = {"model": legacy_pair[0].read_bytes(), "projector": legacy_pair[1].read_bytes(),
              "template": GO_TEMPLATES["plain"].encode()}
    manifest = {"schemaVersion": 2, "layers": [{"mediaType": MEDIA + k, **blob(store, v)} for k, v in layers.items()]}
    path = store / "manifests" / "registry.ollama.ai" / "library" / "p" / "latest"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(manifest))
    monkeypatch.setenv("OLLAMA_MODELS", str(store))
    out = tmp_path / "b"
    assert main(["import", "ollama:p", "-o", str(out), "--quiet", "--no-fuse-vision", "--no-verify",
                 "--preprocess", "pad"]) == 0
    assert load_manifest(out).template == "plain"  # was vicuna_v1 + "nothing in the files says the template"
    assert "import:" not in capsys.readouterr().err
