"""`converters.sources`: Ollama store / LM Studio folder / two paths -> Source, and the Ollama Modelfile.

The fake Ollama store is laid out as Ollama lays it out (manifests/registry.ollama.ai/library/NAME/TAG holding
the manifest JSON, blobs/sha256-<hex> named by the sha256 of their bytes). The Modelfile checks read the
Modelfile back with Ollama's parsing rules and execute its TEMPLATE as Go would (`go_template_eval`), over the
data Ollama gives a template ([img-N] markers in front of the user's text, N counting over the conversation;
the Modelfile's SYSTEM as the first message), and compare with our own template's prompt.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from go_template_eval import parse_modelfile, render_go_template
from ollama_store import write_model

from converters.sources import SourceError, render_modelfile, resolve_source
from llava_local.templates import IMAGE_TOKEN, Turn, get_template

LLM_BYTES = b"GGUF\x03\x00\x00\x00llm"
PROJ_BYTES = b"GGUF\x03\x00\x00\x00clip"
GO_TEMPLATE = "{{ .System }} USER: {{ .Prompt }} ASSISTANT:"


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "ollama-models"
    write_model(root, "llava", "7b", {"model": LLM_BYTES, "projector": PROJ_BYTES, "template": GO_TEMPLATE.encode(),
                                 "system": b"Be brief.", "params": b'{"stop":["USER:","ASSISTANT:"],"num_ctx":4096}'})
    write_model(root, "llava", "latest", {"model": LLM_BYTES + b"2", "projector": PROJ_BYTES + b"2"})
    write_model(root, "llama3", "latest", {"model": LLM_BYTES + b"3", "license": b"text"})
    write_model(root, "bakllava", "q4", {"model": LLM_BYTES + b"4", "projector": PROJ_BYTES + b"4"},
           host="example.com:5000", ns="me")
    monkeypatch.setenv("OLLAMA_MODELS", str(root))
    return root


def test_ollama_model_with_tag(store: Path):
    src = resolve_source("ollama:llava:7b")
    assert src.llm.read_bytes() == LLM_BYTES and src.mmproj.read_bytes() == PROJ_BYTES
    assert src.llm.parent == store / "blobs" and src.llm.name.startswith("sha256-")
    assert src.template == GO_TEMPLATE and src.system == "Be brief."
    assert src.params == {"stop": ["USER:", "ASSISTANT:"], "num_ctx": 4096}
    assert (src.origin, src.name) == ("ollama", "llava-7b")


def test_ollama_default_tag_and_full_names(store: Path):
    src = resolve_source("ollama:llava")
    assert src.llm.read_bytes() == LLM_BYTES + b"2" and src.template is None and src.params == {}
    assert src.name == "llava"
    assert resolve_source("ollama:library/llava:7b").llm.read_bytes() == LLM_BYTES
    assert resolve_source("ollama:registry.ollama.ai/library/LLaVA:7B").mmproj.read_bytes() == PROJ_BYTES
    assert resolve_source("ollama:example.com:5000/me/bakllava:q4").llm.read_bytes() == LLM_BYTES + b"4"


def test_ollama_unknown_model_lists_the_store(store: Path):
    with pytest.raises(SourceError) as e:
        resolve_source("ollama:llava:13b")
    msg = str(e.value)
    assert "\n" not in msg and "llava:13b" in msg
    for have in ("llava:7b", "llava:latest", "llama3:latest", "example.com:5000/me/bakllava:q4"):
        assert have in msg


def test_ollama_model_without_projector(store: Path, tmp_path: Path):
    with pytest.raises(SourceError, match="this Ollama model has no vision projector"):
        resolve_source("ollama:llama3")
    # an explicit projector makes a text-only store model importable
    proj = tmp_path / "mmproj-x.gguf"
    proj.write_bytes(PROJ_BYTES)
    assert resolve_source("ollama:llama3", mmproj=str(proj)).mmproj == proj


def test_ollama_missing_blob_and_missing_store(store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (store / "blobs" / f"sha256-{hashlib.sha256(PROJ_BYTES).hexdigest()}").unlink()
    with pytest.raises(SourceError, match=r"projector blob .*sha256-[0-9a-f]{64} is missing"):
        resolve_source("ollama:llava:7b")
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "nowhere"))
    with pytest.raises(SourceError, match="no Ollama store at"):
        resolve_source("ollama:llava")


def test_ollama_default_root_is_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("OLLAMA_MODELS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    write_model(tmp_path / ".ollama" / "models", "llava", "latest", {"model": LLM_BYTES, "projector": PROJ_BYTES})
    assert resolve_source("ollama:llava").mmproj.read_bytes() == PROJ_BYTES


@pytest.mark.parametrize("bad", ["ollama:", "ollama:a/b/c/d", "ollama:llava:", "ollama://x"])
def test_ollama_malformed_names(store: Path, bad: str):
    with pytest.raises(SourceError, match="not a model name"):
        resolve_source(bad)


def _lmstudio(root: Path) -> Path:
    folder = root / "lmstudio-community" / "llava-v1.5-7b-GGUF"
    folder.mkdir(parents=True)
    (folder / "llava-v1.5-7b-Q4_K_M.gguf").write_bytes(LLM_BYTES)
    (folder / "mmproj-model-f16.gguf").write_bytes(PROJ_BYTES)
    (folder / "README.md").write_text("not a model")
    return folder


def test_lmstudio_folder(tmp_path: Path):
    folder = _lmstudio(tmp_path)
    src = resolve_source(str(folder))
    assert (src.llm.name, src.mmproj.name) == ("llava-v1.5-7b-Q4_K_M.gguf", "mmproj-model-f16.gguf")
    assert (src.origin, src.name, src.template, src.params) == ("lmstudio", "llava-v1.5-7b-GGUF", None, {})


def test_folder_errors_name_the_files(tmp_path: Path):
    folder = _lmstudio(tmp_path)
    (folder / "llava-v1.5-7b-Q8_0.gguf").write_bytes(LLM_BYTES)
    with pytest.raises(SourceError, match=r"2 model GGUFs \(llava-v1.5-7b-Q4_K_M.gguf, llava-v1.5-7b-Q8_0.gguf\)"):
        resolve_source(str(folder))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match="no model"):
        resolve_source(str(empty))
    (folder / "llava-v1.5-7b-Q8_0.gguf").unlink()
    (folder / "mmproj-model-q8_0.gguf").write_bytes(PROJ_BYTES)
    with pytest.raises(SourceError, match=r"2 \(mmproj-model-f16.gguf, mmproj-model-q8_0.gguf\)"):
        resolve_source(str(folder))
    (folder / "mmproj-model-q8_0.gguf").unlink()
    (folder / "mmproj-model-f16.gguf").unlink()
    with pytest.raises(SourceError, match=r"no mmproj\*\.gguf"):
        resolve_source(str(folder))


def test_two_paths(tmp_path: Path):
    folder = _lmstudio(tmp_path)
    llm, proj = folder / "llava-v1.5-7b-Q4_K_M.gguf", folder / "mmproj-model-f16.gguf"
    src = resolve_source(str(llm), mmproj=str(proj))
    assert (src.llm, src.mmproj, src.origin, src.name) == (llm, proj, "paths", "llava-v1.5-7b-Q4_K_M")
    with pytest.raises(SourceError, match=r"--mmproj .*next to it: mmproj-model-f16.gguf"):
        resolve_source(str(llm))
    with pytest.raises(SourceError, match="does not exist"):
        resolve_source(str(folder / "nope.gguf"), mmproj=str(proj))
    with pytest.raises(SourceError, match="--mmproj file does not exist"):
        resolve_source(str(llm), mmproj=str(folder / "nope.gguf"))


# --- Modelfile ---------------------------------------------------------------------------------------------------


def _ollama_messages(system: str, turns: list[Turn]) -> dict:
    """Ollama's template data for a chat: the Modelfile SYSTEM as the first message (server/routes.go), one
    [img-N] marker per image prefixed to the text, N counting over all messages (server/prompt.go), and
    `.System` joining the system messages (template/template.go collate)."""
    messages = [{"Role": "system", "Content": system, "Images": []}] if system else []
    n = 0
    for t in turns:
        images = [f"image{n + i}" for i in range(t.n_images)]
        prefix = "".join(f"[img-{n + i}]" for i in range(t.n_images))
        n += t.n_images
        messages.append({"Role": t.role, "Content": prefix + t.text, "Images": images})
    return {"System": system, "Messages": messages, "Response": ""}


CONVERSATION = [Turn("user", "What is in the picture?", n_images=1), Turn("assistant", "A red circle."),
                Turn("user", "Compare these two.", n_images=2), Turn("assistant", "Both are round."),
                Turn("user", "And the colour?")]


@pytest.mark.parametrize("name", ["vicuna_v1", "llava_v1", "chatml", "plain", "llama_2"])
def test_modelfile_template_renders_our_prompt(name: str):
    tmpl = get_template(name)
    text = render_modelfile("llm-q4_k_m.gguf", "mmproj-model-f16.gguf", name, list(tmpl.stop_strings),
                            {"temperature": 0.2, "num_ctx": 2048})
    commands = parse_modelfile(text)
    assert [v for c, v in commands if c == "from"] == ["./llm-q4_k_m.gguf", "./mmproj-model-f16.gguf"]
    assert [v for c, v in commands if c == "parameter stop"] == list(tmpl.stop_strings)
    assert ("parameter temperature", "0.2") in commands and ("parameter num_ctx", "2048") in commands
    (go,) = [v for c, v in commands if c == "template"]
    system = dict(commands).get("system", "")
    assert system == tmpl.system
    for turns in (CONVERSATION[:1], CONVERSATION[:3], CONVERSATION):
        ours = tmpl.to_string(tmpl.render(turns))
        theirs = render_go_template(go, _ollama_messages(system, turns))
        assert re.sub(r"\[img-\d+\]", IMAGE_TOKEN, theirs) == ours
        assert re.findall(r"\[img-(\d+)\]", theirs) == [str(i) for i in range(ours.count(IMAGE_TOKEN))]


def test_vicuna_modelfile_exact_text():
    # Independently written expectation for the two-turn vicuna_v1 prompt our template renders.
    tmpl = get_template("vicuna_v1")
    go = dict(parse_modelfile(render_modelfile("a.gguf", "b.gguf", "vicuna_v1", ["</s>"], {})))["template"]
    turns = [Turn("user", "Hi?", n_images=1), Turn("assistant", "Hello."), Turn("user", "Bye?")]
    expected = f"{tmpl.system} USER: [img-0]\nHi? ASSISTANT: Hello.</s>USER: Bye? ASSISTANT:"
    assert render_go_template(go, _ollama_messages(tmpl.system, turns)) == expected
    # a user who overrides the system text gets it in place of the default
    assert render_go_template(go, _ollama_messages("Be terse.", turns[:1])).startswith("Be terse. USER: [img-0]\n")


def test_modelfile_quotes_values_ollama_would_misread():
    text = render_modelfile("/abs/llm.gguf", "../p/mmproj.gguf", "plain", ["\n"], {"stop": ["x"], "seed": 1})
    commands = parse_modelfile(text)
    assert [v for c, v in commands if c == "from"] == ["/abs/llm.gguf", "../p/mmproj.gguf"]
    assert [v for c, v in commands if c.startswith("parameter")] == ["\n", "1"]  # `stop` comes from the argument
    with pytest.raises(Exception, match="unknown chat template"):
        render_modelfile("a", "b", "nope", [], {})


def test_template_for_ollama():
    from converters.sources import template_for_ollama

    for name in ("vicuna_v1", "llava_v1", "chatml", "plain", "llama_2"):
        commands = dict(parse_modelfile(render_modelfile("a.gguf", "b.gguf", name, [], {})))
        assert template_for_ollama(commands["template"], commands.get("system")) == name
    # foreign templates by their role markers
    assert template_for_ollama(GO_TEMPLATE, "Be brief.") == "vicuna_v1"
    assert template_for_ollama("{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}") \
        == "chatml"
    assert template_for_ollama("{{ .Prompt }}") is None and template_for_ollama(None) is None
