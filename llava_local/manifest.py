"""The bundle manifest: the one contract between the converters and the runtime.

A bundle is a directory holding `manifest.json`, `vision.onnx` (optionally `vision-int8.onnx`,
`vision-fp16.onnx`) and one or more `llm-<quant>.gguf`. The manifest records everything the runtime must
not guess: preprocessing, the vision graph's output shape, the chat template, context length, stop strings,
the sha256 and size of every file, provenance and the converter's parity report.

`load_manifest(dir)` validates the JSON and checks every listed file exists with its recorded size (cheap);
`verify_files(dir, manifest)` re-hashes them (slow on multi-GB files; `llava-local info --verify`).
Every failure is a `BundleError` whose message says how to fix it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BundleError
from .preprocess import PreprocessConfig
from .templates import TEMPLATES

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"

# Quantizations the converter can write, in the order `info` lists them (name → llama.cpp ftype).
LLM_QUANTS = {"f32": 0, "f16": 1, "q8_0": 7, "q6_k": 18, "q5_k_m": 17, "q4_k_m": 15, "q4_0": 2}
# Every llama.cpp file type a bundle may hold (`llava-local import` keeps a community GGUF as it is); values are
# llama.h's LLAMA_FTYPE_* (3-6 and 33-35 are gone from llama.cpp).
LLM_FTYPES = {**LLM_QUANTS, "q4_1": 3, "q5_0": 8, "q5_1": 9, "q2_k": 10, "q3_k_s": 11, "q3_k_m": 12, "q3_k_l": 13,
              "q4_k_s": 14, "q5_k_s": 16, "iq2_xxs": 19, "iq2_xs": 20, "q2_k_s": 21, "iq3_xs": 22, "iq3_xxs": 23,
              "iq1_s": 24, "iq4_nl": 25, "iq3_s": 26, "iq3_m": 27, "iq2_s": 28, "iq2_m": 29, "iq4_xs": 30,
              "iq1_m": 31, "bf16": 32, "tq1_0": 36, "tq2_0": 37, "mxfp4_moe": 38, "nvfp4": 39, "q1_0": 40,
              "q2_0": 41}
DEFAULT_LLM_QUANT = "q4_k_m"  # what `llava-local convert` writes when no --quant is named
VISION_DTYPES = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class VisionSpec:
    """The ONNX vision graph: pixel_values[B,3,S,S] → image_embeds[B, tokens_per_image, embed_dim]."""

    files: dict[str, str]  # dtype ("fp32" | "fp16" | "int8") → file name in the bundle
    default: str
    tokens_per_image: int
    embed_dim: int
    input_name: str = "pixel_values"
    output_name: str = "image_embeds"


@dataclass(frozen=True)
class LLMSpec:
    """The GGUF language model(s)."""

    files: dict[str, str]  # quant name (see LLM_FTYPES) → file name in the bundle
    default: str
    context_length: int


@dataclass(frozen=True)
class Manifest:
    name: str
    preprocess: PreprocessConfig
    vision: VisionSpec
    llm: LLMSpec
    template: str
    stop_strings: tuple[str, ...]
    files: dict[str, dict[str, Any]]  # file name → {"sha256": str, "size": int}
    system_prompt: str | None = None  # overrides the template's system text when set
    suggested_prompts: tuple[str, ...] = ()  # questions this model answers well, shown to a new user
    provenance: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "name": self.name,
            "preprocess": self.preprocess.to_dict(),
            "vision": {
                "files": dict(self.vision.files),
                "default": self.vision.default,
                "tokens_per_image": self.vision.tokens_per_image,
                "embed_dim": self.vision.embed_dim,
                "input_name": self.vision.input_name,
                "output_name": self.vision.output_name,
            },
            "llm": {"files": dict(self.llm.files), "default": self.llm.default,
                    "context_length": self.llm.context_length},
            "template": self.template,
            "system_prompt": self.system_prompt,
            "suggested_prompts": list(self.suggested_prompts),
            "stop_strings": list(self.stop_strings),
            "files": {k: dict(v) for k, v in self.files.items()},
            "provenance": self.provenance,
            "parity": self.parity,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "manifest") -> Manifest:
        """Parse and validate; raise BundleError naming the bad field."""
        try:
            version = int(d.get("schema_version", -1))
            if version != SCHEMA_VERSION:
                raise BundleError(
                    f"{where}: schema_version {version} is not supported (this llava-local reads "
                    f"{SCHEMA_VERSION}); re-run `llava-local convert` with this version"
                )
            v, m = d["vision"], d["llm"]
            manifest = cls(
                name=str(d["name"]),
                preprocess=PreprocessConfig.from_dict(d["preprocess"]),
                vision=VisionSpec(
                    files={str(k): str(f) for k, f in v["files"].items()},
                    default=str(v["default"]),
                    tokens_per_image=int(v["tokens_per_image"]),
                    embed_dim=int(v["embed_dim"]),
                    input_name=str(v.get("input_name", "pixel_values")),
                    output_name=str(v.get("output_name", "image_embeds")),
                ),
                llm=LLMSpec(files={str(k): str(f) for k, f in m["files"].items()}, default=str(m["default"]),
                            context_length=int(m["context_length"])),
                template=str(d["template"]),
                system_prompt=d.get("system_prompt"),
                suggested_prompts=parse_suggested_prompts(d.get("suggested_prompts", ()), where),
                stop_strings=tuple(str(s) for s in d.get("stop_strings", ())),
                files={str(k): {"sha256": str(f["sha256"]), "size": int(f["size"])} for k, f in d["files"].items()},
                provenance=dict(d.get("provenance", {})),
                parity=dict(d.get("parity", {})),
                schema_version=version,
            )
        except BundleError:
            raise
        except KeyError as e:
            raise BundleError(f"{where}: missing field {e.args[0]!r}; re-run `llava-local convert`") from None
        except (TypeError, ValueError, AttributeError, OverflowError) as e:  # Overflow: float(10**400), int(inf)
            raise BundleError(f"{where}: malformed ({e}); re-run `llava-local convert`") from None
        if manifest.system_prompt is not None and not isinstance(manifest.system_prompt, str):
            raise BundleError(f"{where}: system_prompt must be text or null; re-run `llava-local convert`")
        manifest._check(where)
        return manifest

    def _check(self, where: str) -> None:
        if not self.name.strip() or not self.name.isprintable() or len(self.name) > 200:
            # the name reaches terminals (info, the server's start-up line, the chat app's status bar)
            raise BundleError(f"{where}: the model name must be one printable line of 1 to 200 characters")
        if self.template not in TEMPLATES:
            raise BundleError(f"{where}: unknown chat template {self.template!r}; known: {sorted(TEMPLATES)}")
        for kind, spec, allowed in (("vision", self.vision, VISION_DTYPES), ("llm", self.llm, tuple(LLM_FTYPES))):
            if not spec.files:
                raise BundleError(f"{where}: no {kind} file listed")
            if spec.default not in spec.files:
                raise BundleError(f"{where}: {kind} default {spec.default!r} is not among {sorted(spec.files)}")
            for key, fname in spec.files.items():
                if key not in allowed:
                    raise BundleError(f"{where}: unknown {kind} variant {key!r}; expected one of {list(allowed)}")
                if fname not in self.files:
                    raise BundleError(f"{where}: {fname} has no sha256/size entry under 'files'")
                if Path(fname).name != fname:
                    raise BundleError(f"{where}: file names must be plain names inside the bundle, not {fname!r}")
        if self.vision.tokens_per_image <= 0 or self.vision.embed_dim <= 0 or self.llm.context_length <= 0:
            raise BundleError(f"{where}: tokens_per_image, embed_dim and context_length must be positive")


MAX_SUGGESTED = 8  # prompts, each at most MAX_SUGGESTED_CHARS: a hint list, not a prompt library
MAX_SUGGESTED_CHARS = 200


def parse_suggested_prompts(value: Any, where: str) -> tuple[str, ...]:
    """The optional `suggested_prompts`: a short list of short, non-empty, single-line strings."""
    if not isinstance(value, (list, tuple)) or len(value) > MAX_SUGGESTED:
        raise BundleError(f"{where}: suggested_prompts must be a list of at most {MAX_SUGGESTED} strings")
    out = []
    for s in value:
        if not isinstance(s, str) or not s.strip() or len(s) > MAX_SUGGESTED_CHARS or not s.isprintable():
            raise BundleError(f"{where}: each suggested prompt must be one printable line of 1 to "
                              f"{MAX_SUGGESTED_CHARS} characters, not {str(s)[:40]!r}")
        out.append(s.strip())
    return tuple(out)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entry(path: Path) -> dict[str, Any]:
    """The manifest's record of one file: sha256 and size in bytes."""
    return {"sha256": sha256_file(path), "size": path.stat().st_size}


def load_manifest(bundle_dir: str | Path) -> Manifest:
    """Read and validate `bundle_dir/manifest.json`; check every file exists with its recorded size."""
    bundle = Path(bundle_dir).expanduser()
    path = bundle / MANIFEST_NAME
    if not bundle.is_dir():
        raise BundleError(f"bundle not found: {bundle} (convert a checkpoint with `llava-local convert`)")
    if not path.is_file():
        raise BundleError(f"{bundle} is not a bundle: no {MANIFEST_NAME} (make one with `llava-local convert`)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:  # Recursion: [[[[...]]]]
        raise BundleError(f"{path}: not valid JSON ({str(e)[:200]}); re-run `llava-local convert`") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path}: expected a JSON object; re-run `llava-local convert`")
    manifest = Manifest.from_dict(data, where=str(path))
    for fname, entry in manifest.files.items():
        f = bundle / fname
        if not f.is_file():
            raise BundleError(f"bundle {bundle} is incomplete: {fname} is missing (re-run `llava-local convert`)")
        if f.stat().st_size != entry["size"]:
            raise BundleError(
                f"bundle {bundle}: {fname} has {f.stat().st_size} bytes, the manifest says {entry['size']} "
                "(truncated copy? copy it again or re-run `llava-local convert`)"
            )
    return manifest


def verify_files(bundle_dir: str | Path, manifest: Manifest) -> None:
    """Re-hash every file and compare with the manifest (raises BundleError on the first mismatch)."""
    bundle = Path(bundle_dir)
    for fname, entry in manifest.files.items():
        if sha256_file(bundle / fname) != entry["sha256"]:
            raise BundleError(f"bundle {bundle}: {fname} does not match its sha256 (corrupted; re-convert or re-copy)")


def write_manifest(bundle_dir: str | Path, manifest: Manifest) -> Path:
    """Write manifest.json (pretty, stable key order) and return its path."""
    path = Path(bundle_dir) / MANIFEST_NAME
    path.write_text(json.dumps(manifest.to_dict(), indent=2) + "\n", encoding="utf-8")
    return path
