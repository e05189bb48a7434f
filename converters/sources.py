"""Where community model files live: resolve an `import` source to an LLM GGUF + mmproj GGUF, offline.

Contract: `resolve_source(spec, mmproj=None) -> Source` (stdlib only, never touches the network):
- `LLM.gguf` with `mmproj=MMPROJ.gguf`: two paths ("paths").
- `ollama:NAME[:TAG]` (also `NS/NAME:TAG` and `HOST/NS/NAME:TAG`): Ollama's local store ("ollama"). The store
  root is `$OLLAMA_MODELS`, else `~/.ollama/models`. A model is the JSON manifest
  `manifests/HOST/NS/NAME/TAG` (defaults registry.ollama.ai / library / latest) whose `layers` name blobs by
  `digest` "sha256:<64 hex>", stored as `blobs/sha256-<hex>`. Layer media types:
  `application/vnd.ollama.image.model` (the LLM GGUF), `.projector` (the mmproj GGUF), `.template` (a Go
  template; `.prompt` is its older name), `.system` (text), `.params` (JSON: stop, temperature, num_ctx, ...).
- a directory holding one `*.gguf` plus one `*mmproj*.gguf` (LM Studio's `publisher/model/` layout, "lmstudio").
An explicit `mmproj` overrides the projector a store or folder would give. Every failure is a one-line
`SourceError` that says what the store or folder has.

`render_modelfile(...)` writes the Ollama Modelfile for an exported model: the projector is a second `FROM` line
(Ollama files a GGUF of architecture `clip` with a vision encoder as the projector layer), and the chat template
is one of `GO_TEMPLATES`, Go `text/template` text that renders the same prompt as our template
(`llava_local.templates`) over Ollama's template data: `.System` (all system messages joined) and `.Messages`
(`.Role`, `.Content`, `.Images`). Ollama puts one `[img-N]` marker per image in front of the user's text, N counting
images over the whole conversation; our templates put `<image>\\n` per image there, so the Go templates re-emit each
marker followed by a newline (a marker written by the user as `[img]` inside the text is left where it is).
`template_for_ollama(go_template, system)` maps an Ollama model's template back to one of ours (exact for our
own Modelfiles, by role markers otherwise).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llava_local.errors import LlavaLocalError


class SourceError(LlavaLocalError):
    """An import source (paths, Ollama store, model folder) names nothing usable."""


OLLAMA_HOST = "registry.ollama.ai"
OLLAMA_NAMESPACE = "library"
OLLAMA_TAG = "latest"
MEDIA = "application/vnd.ollama.image."
# layer kind (media type after MEDIA) -> Source field
LAYER_KINDS = {"model": "llm", "projector": "mmproj", "template": "template", "prompt": "template",
               "system": "system", "params": "params"}
LAYER_LABELS = {"llm": "model", "mmproj": "projector"}  # Source field -> Ollama's word, for messages
DIGEST_RE = re.compile(r"^sha256[:-]([0-9a-fA-F]{64})$")


@dataclass(frozen=True)
class Source:
    llm: Path
    mmproj: Path
    template: str | None = None  # Ollama's Go template text, when the store has one
    system: str | None = None
    params: dict[str, Any] = field(default_factory=dict)  # Ollama's params JSON (stop, temperature, num_ctx, ...)
    origin: str = "paths"  # "paths" | "ollama" | "lmstudio"
    name: str = "imported"  # a suggested bundle name


def resolve_source(spec: str, mmproj: str | None = None) -> Source:
    """Resolve `spec` (a GGUF path, `ollama:NAME[:TAG]`, or a model folder) to the files an import reads."""
    override = _existing_file(Path(mmproj).expanduser(), "the --mmproj file") if mmproj else None
    if spec.startswith("ollama:"):
        return _from_ollama(spec[len("ollama:"):], override)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _from_folder(path, override)
    llm = _existing_file(path, "the LLM GGUF")
    if override is None:
        beside = sorted(p.name for p in _ggufs(llm.parent) if _is_mmproj(p))
        hint = f" (next to it: {', '.join(beside)})" if beside else ""
        raise SourceError(f"{llm}: give the vision projector with --mmproj MMPROJ.gguf{hint}, or import the folder")
    return Source(llm=llm, mmproj=override, origin="paths", name=_clean_name(llm.stem))


# --- Ollama ---------------------------------------------------------------------------------------------------


def ollama_root() -> Path:
    """The Ollama model store: `$OLLAMA_MODELS`, else `~/.ollama/models` (Ollama's envconfig.Models)."""
    env = os.environ.get("OLLAMA_MODELS", "")
    return Path(env).expanduser() if env else Path.home() / ".ollama" / "models"


def parse_ollama_name(name: str) -> tuple[str, str, str, str]:
    """`[HOST/][NS/]MODEL[:TAG]` -> (host, namespace, model, tag) with Ollama's defaults filled in."""
    rest, tag = name, ""
    if rest.rfind(":") > rest.rfind("/"):  # a ':' after the last '/' starts the tag (a host may have a port)
        rest, tag = rest.rsplit(":", 1)
    parts = rest.split("/")
    if not rest or len(parts) > 3 or not all(parts) or not tag and name.endswith(":"):
        raise SourceError(f"ollama:{name}: not a model name (expected ollama:NAME[:TAG], e.g. ollama:llava:7b)")
    model = parts[-1]
    namespace = parts[-2] if len(parts) >= 2 else OLLAMA_NAMESPACE
    host = parts[-3] if len(parts) == 3 else OLLAMA_HOST
    host = host.split("://", 1)[-1]
    return host, namespace, model, tag or OLLAMA_TAG


def ollama_models(root: Path) -> list[str]:
    """Every model in the store, as Ollama displays it (`NAME:TAG`, namespace/host only when not the default)."""
    base = root / "manifests"
    out = []
    for p in sorted(base.glob("*/*/*/*")):
        if not p.is_file():
            continue
        host, ns, model, tag = p.relative_to(base).parts
        prefix = "" if host == OLLAMA_HOST and ns == OLLAMA_NAMESPACE else f"{ns}/" if host == OLLAMA_HOST \
            else f"{host}/{ns}/"
        out.append(f"{prefix}{model}:{tag}")
    return out


def _manifest_path(root: Path, host: str, ns: str, model: str, tag: str) -> Path | None:
    exact = root / "manifests" / host / ns / model / tag
    if exact.is_file():
        return exact
    # Ollama compares names case-insensitively; the folders keep the spelling of the first pull.
    want = [s.lower() for s in (host, ns, model, tag)]
    for p in (root / "manifests").glob("*/*/*/*"):
        if p.is_file() and [s.lower() for s in p.relative_to(root / "manifests").parts] == want:
            return p
    return None


def _from_ollama(name: str, override: Path | None) -> Source:
    host, ns, model, tag = parse_ollama_name(name)
    root = ollama_root()
    manifest = _manifest_path(root, host, ns, model, tag)
    if manifest is None:
        if not (root / "manifests").is_dir():
            raise SourceError(f"ollama:{name}: no Ollama store at {root} (set OLLAMA_MODELS to its models folder)")
        have = ollama_models(root)
        listing = ", ".join(have) if have else "nothing"
        raise SourceError(f"ollama:{name}: not in the Ollama store at {root}; it has: {listing}")
    try:
        layers = json.loads(manifest.read_text(encoding="utf-8"))["layers"]
        found: dict[str, list[str]] = {}
        for layer in layers:
            kind = str(layer["mediaType"]).split(";", 1)[0].strip()
            if kind.startswith(MEDIA) and kind[len(MEDIA):] in LAYER_KINDS:
                found.setdefault(LAYER_KINDS[kind[len(MEDIA):]], []).append(str(layer["digest"]))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise SourceError(f"{manifest}: not an Ollama manifest ({type(e).__name__}: {e})") from None
    label = f"ollama:{name}"
    if "llm" not in found:
        raise SourceError(f"{label}: the manifest {manifest} has no model layer")
    if override is None and "mmproj" not in found:
        raise SourceError(f"{label}: this Ollama model has no vision projector (give one with --mmproj)")
    if override is None and len(found["mmproj"]) > 1:
        raise SourceError(f"{label}: this Ollama model has {len(found['mmproj'])} projector layers; "
                          "pick one with --mmproj")
    blob = {k: _blob(root, v[-1], label, k) for k, v in found.items()}  # later layers override earlier ones
    params: dict[str, Any] = {}
    if "params" in blob:
        try:
            params = json.loads(blob["params"].read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise SourceError(f"{label}: its params layer {blob['params']} is not JSON ({e})") from None
        if not isinstance(params, dict):
            raise SourceError(f"{label}: its params layer {blob['params']} is not a JSON object")
    text = {k: blob[k].read_text(encoding="utf-8", errors="replace") for k in ("template", "system") if k in blob}
    suggested = model if tag == OLLAMA_TAG else f"{model}-{tag}"
    return Source(llm=blob["llm"], mmproj=override or blob["mmproj"], template=text.get("template"),
                  system=text.get("system"), params=params, origin="ollama", name=_clean_name(suggested))


def _blob(root: Path, digest: str, label: str, kind: str) -> Path:
    kind = LAYER_LABELS.get(kind, kind)
    m = DIGEST_RE.match(digest)
    if not m:
        raise SourceError(f"{label}: its {kind} layer has a malformed digest {digest!r}")
    path = root / "blobs" / f"sha256-{m.group(1)}"
    if not path.is_file():
        raise SourceError(f"{label}: the {kind} blob {path} is missing (re-pull the model with `ollama pull`)")
    return path


# --- folders (LM Studio) and paths ------------------------------------------------------------------------------


def _ggufs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".gguf")


def _is_mmproj(path: Path) -> bool:
    return "mmproj" in path.name.lower()


def _from_folder(folder: Path, override: Path | None) -> Source:
    files = _ggufs(folder)
    llms = [p for p in files if not _is_mmproj(p)]
    projs = [p for p in files if _is_mmproj(p)]
    if len(llms) != 1:
        which = "no model *.gguf" if not llms else f"{len(llms)} model GGUFs ({', '.join(p.name for p in llms)})"
        hint = "" if not llms else "; import one with LLM.gguf --mmproj MMPROJ.gguf"
        raise SourceError(f"{folder}: expected one model GGUF besides the mmproj, found {which}{hint}")
    if override is None and len(projs) != 1:
        which = "no mmproj*.gguf" if not projs else f"{len(projs)} ({', '.join(p.name for p in projs)})"
        raise SourceError(f"{folder}: expected one vision projector (mmproj*.gguf), found {which}; "
                          "give one with --mmproj")
    return Source(llm=llms[0], mmproj=override or projs[0], origin="lmstudio", name=_clean_name(folder.name))


def _existing_file(path: Path, what: str) -> Path:
    if not path.exists():
        raise SourceError(f"{path}: {what} does not exist")
    if not path.is_file():
        raise SourceError(f"{path}: {what} is not a file")
    return path


def _clean_name(name: str) -> str:
    """A bundle-directory-safe name: letters, digits, '.', '_' and '-' only."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")
    return cleaned or "imported"


# --- Modelfile ---------------------------------------------------------------------------------------------------

# Counts images over the whole conversation as Ollama numbers its [img-N] markers ($k grows one '.' per image),
# and rebuilds this message's marker prefix ($tags) and our rendering of it ($shown: a newline after each).
_GO_IMAGES = ('{{ $tags := "" }}{{ $shown := "" }}{{ range .Images }}'
              '{{ $tags = printf "%s[img-%d]" $tags (len $k) }}{{ $shown = printf "%s[img-%d]\\n" $shown (len $k) }}'
              '{{ $k = printf "%s." $k }}{{ end }}')
# The user's text with "<image>\n" layout: markers + newline, then the text after Ollama's prefix.
_GO_USER_TEXT = ('{{ if and $tags (le (len $tags) (len .Content)) (eq (slice .Content 0 (len $tags)) $tags) }}'
                 '{{ $shown }}{{ slice .Content (len $tags) }}{{ else }}{{ .Content }}{{ end }}')

# llava-local template name -> Go template (Ollama TEMPLATE). Mirrors the renderers of llava_local.templates.
GO_TEMPLATES: dict[str, str] = {
    # style "two": "<sys> USER: <image>\nQ ASSISTANT: A</s>USER: Q2 ASSISTANT:"
    "vicuna_v1": ('{{ $k := "" }}{{ .System }} {{ range .Messages }}' + _GO_IMAGES
                  + '{{ if eq .Role "user" }}USER: ' + _GO_USER_TEXT
                  + ' {{ else if eq .Role "assistant" }}ASSISTANT: {{ .Content }}</s>{{ end }}{{ end }}ASSISTANT:'),
    # stage-1 format: the images, then each answer and "\n"; the user's words are not part of the prompt.
    "plain": ('{{ $k := "" }}{{ .System }}{{ range .Messages }}' + _GO_IMAGES
              + '{{ if eq .Role "user" }}{{ $tags }}{{ else if eq .Role "assistant" }}{{ .Content }}\n'
              '{{ end }}{{ end }}'),
    "chatml": ('{{ $k := "" }}{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}'
               '{{ range .Messages }}' + _GO_IMAGES
               + '{{ if eq .Role "user" }}<|im_start|>user\n' + _GO_USER_TEXT + '<|im_end|>\n'
               '{{ else if eq .Role "assistant" }}<|im_start|>assistant\n{{ .Content }}<|im_end|>\n'
               '{{ end }}{{ end }}<|im_start|>assistant\n'),
    "llama_2": ('{{ $k := "" }}{{ $first := true }}{{ range .Messages }}' + _GO_IMAGES
                + '{{ if eq .Role "user" }}{{ if $first }}[INST] {{ if $.System }}<<SYS>>\n{{ $.System }}\n'
                '<</SYS>>\n\n{{ end }}{{ else }}<s>[INST] {{ end }}{{ $first = false }}' + _GO_USER_TEXT
                + ' [/INST]{{ else if eq .Role "assistant" }} {{ .Content }} </s>{{ end }}{{ end }}'),
}
GO_TEMPLATES["llava_v1"] = GO_TEMPLATES["vicuna_v1"]  # same layout; the system text differs (SYSTEM line)


# Markers of a foreign Go template -> the llava-local template with that layout (first match wins).
GO_TEMPLATE_MARKERS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("<|im_start|>",), "chatml"),
    (("[INST]",), "llama_2"),
    (("USER:", "ASSISTANT:"), "vicuna_v1"),
)


def template_for_ollama(go_template: str | None, system: str | None = None) -> str | None:
    """The llava-local template an Ollama model's Go template (and SYSTEM text) stands for; None if unknown.

    Our own Modelfiles round-trip exactly (vicuna_v1 and llava_v1 share a Go template and differ by SYSTEM);
    other templates are recognised by their role markers, which say the layout but not every separator.
    """
    from llava_local.templates import get_template

    if not go_template:
        return None
    for name, text in GO_TEMPLATES.items():
        if go_template.strip() == text.strip() and (name != "vicuna_v1" or system != get_template("llava_v1").system):
            return name
    for markers, name in GO_TEMPLATE_MARKERS:
        if all(m in go_template for m in markers):
            return name
    return None


def _modelfile_value(value: str) -> str:
    """A Modelfile argument: bare when it has no edge space or newline, else quoted as Ollama's parser reads it."""
    if "\n" not in value and value == value.strip() and value and not value.startswith('"'):
        return value
    if '"""' in value:
        raise SourceError(f"cannot write {value!r} into a Modelfile (Ollama's parser has no escape for it)")
    return f'"""{value}"""'


def render_modelfile(llm_file: str, mmproj_file: str, template: str, stop: list[str],
                     params: dict[str, Any], system: str | None = None) -> str:
    """An Ollama Modelfile for `llm_file` + `mmproj_file` (paths relative to the Modelfile) with our template; its
    SYSTEM is `system` when given (a bundle's own system prompt), else the template's."""
    from llava_local.templates import get_template

    tmpl = get_template(template)
    if template not in GO_TEMPLATES:
        known = ", ".join(sorted(GO_TEMPLATES))
        raise SourceError(f"template {template!r} has no Ollama (Go) rendering; known: {known}")
    lines = [f"FROM {_relative(llm_file)}", f"FROM {_relative(mmproj_file)}",
             f"TEMPLATE {_modelfile_value(GO_TEMPLATES[template])}"]
    if system or tmpl.system:
        lines.append(f"SYSTEM {_modelfile_value(system or tmpl.system)}")
    lines += [f"PARAMETER stop {_modelfile_value(s)}" for s in stop]
    for key, value in params.items():
        if key == "stop":
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            text = json.dumps(v) if isinstance(v, bool) else str(v)
            lines.append(f"PARAMETER {key} {_modelfile_value(text)}")
    return "\n".join(lines) + "\n"


def _relative(path: str) -> str:
    # Ollama reads a FROM argument that names no file as a model name; "./" makes the intent plain (as its docs do).
    return path if path.startswith(("/", "./", "../", "~")) else f"./{path}"
