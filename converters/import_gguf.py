"""Import a llama.cpp GGUF + mmproj pair (paths, an Ollama store entry, an LM Studio folder) into a bundle. No torch.

Contract: `import_pair(ImportOptions) -> ImportResult`. Like `converters.bundle.convert`, everything is written in a
hidden temporary directory next to the target and renamed into place only after every step, the self-check
included, has passed; on any failure the temporary directory is removed and nothing is left behind.
- vision: the mmproj is read and validated (`converters.mmproj`), rebuilt as `vision.onnx` (`mmproj_onnx`), fused
  like `convert`'s graph, optional fp16/int8 variants (the int8 one gated on cosine with fp32).
- LLM: the GGUF goes in as it is, hard-linked when the filesystem allows it, else copied, as `llm-<type>.gguf`
  where `<type>` is its llama.cpp file type (`llava_local.manifest.LLM_FTYPES`). `quant` re-quantizes an
  F32/F16/BF16 source with llama.cpp's quantizer; a file that is already quantized is refused (quality loss).
- manifest: context length, template and stop strings from the GGUF metadata: our own exports carry
  `llava_local.template`; otherwise `tokenizer.chat_template` (or Ollama's TEMPLATE) is matched onto the template
  registry (`detect_template`); preprocessing from `--preprocess`, our own `llava_local.preprocess` mmproj key,
  else pad. What had to be assumed (vicuna_v1, pad) is said in one stderr line.
- self-check (the manifest's `parity`): the fp32 ONNX graph (and every variant) against the numpy reference of the
  same mmproj on generated images (max |Δ|, cosine), gated as `convert` gates its graphs against torch
  (`verify.Gates`: fp32 max |Δ| and cosine, fp16 cosine); the template's prompt token ids through the runtime's
  `Engine` (BOS first when the GGUF adds one; the stop strings' ids recorded); one greedy answer through
  `open_model` + `ChatSession`.
Errors are `ConversionError` lines: a missing or truncated file, a language model GGUF given as the mmproj (or
the other way round), a projector we do not support, an mmproj whose output width is not the LLM's `n_embd`.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llava_local import __version__
from llava_local.errors import ConversionError
from llava_local.manifest import LLM_FTYPES, VISION_DTYPES, LLMSpec, Manifest, VisionSpec, file_entry, write_manifest
from llava_local.preprocess import PreprocessConfig
from llava_local.templates import TEMPLATES, Turn, get_template, text_chunks

from .bundle import (
    VISION_FILES,
    Progress,
    _prepare_target,
    llm_file,
    staged,
    vision_variants,
)
from .mmproj import field_value, open_gguf, read_mmproj
from .sources import Source, resolve_source
from .verify import failures, sample_pixels

DEFAULT_TEMPLATE, DEFAULT_PREPROCESS = "vicuna_v1", "pad"
UNQUANTIZED = ("f32", "f16", "bf16")
CHECK_PROMPT = "What is in the image? Describe it."


@dataclass(frozen=True)
class ImportOptions:
    source: str | Path  # LLM.gguf, "ollama:NAME[:TAG]" or a folder with *.gguf + mmproj*.gguf
    out: Path
    mmproj: Path | None = None
    name: str | None = None
    template: str | None = None
    preprocess: str | None = None  # "pad" | "crop"
    vision_dtypes: tuple[str, ...] = ("fp32",)
    quant: str | None = None
    force: bool = False
    verify: bool = True
    fuse_vision: bool = True
    n_tokens: int = 16

    def __post_init__(self) -> None:
        bad = [d for d in self.vision_dtypes if d not in VISION_DTYPES]
        if bad or not self.vision_dtypes:
            raise ConversionError(f"unknown --vision-dtype {bad}; choose from {', '.join(VISION_DTYPES)}")
        if self.template is not None and self.template not in TEMPLATES:
            raise ConversionError(f"unknown --template {self.template!r}; known: {', '.join(sorted(TEMPLATES))}")
        if self.preprocess not in (None, "pad", "crop"):
            raise ConversionError(f"--preprocess must be pad or crop, not {self.preprocess!r}")


@dataclass
class ImportResult:
    bundle: Path
    manifest: Manifest
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class LLMInfo:
    """What the runtime needs from a language model GGUF's header."""

    arch: str
    n_embd: int
    context_length: int
    file_type: str  # a key of LLM_FTYPES
    chat_template: str | None
    our_template: str | None  # llava_local.template (our own exports)
    bos: int | None
    eos: int | None
    name: str


def resolve(opts: ImportOptions) -> Source:
    """The two files (and Ollama's template/system/params) through `converters.sources.resolve_source`."""
    return resolve_source(str(opts.source), str(opts.mmproj) if opts.mmproj is not None else None)


def read_llm_info(path: Path) -> LLMInfo:
    """The header of a language-model GGUF; one ConversionError line if it is not one."""
    reader = open_gguf(path, "language model GGUF")
    arch = field_value(reader, "general.architecture")
    if arch == "clip":
        raise ConversionError(f"{path} is an mmproj (image encoder), not a language model; pass it with --mmproj")
    if not arch:
        raise ConversionError(f"{path}: no general.architecture in the GGUF header (not a llama.cpp model?)")
    n_embd = field_value(reader, f"{arch}.embedding_length")
    if n_embd is None:
        raise ConversionError(f"{path}: no {arch}.embedding_length in the GGUF header")
    ftype = field_value(reader, "general.file_type")
    names = {v: k for k, v in LLM_FTYPES.items()}
    if ftype is None:  # old files: decide by the most common tensor type
        ftype = 1 if any(t.tensor_type.name == "F16" for t in reader.tensors) else 0
    if int(ftype) not in names:
        raise ConversionError(f"{path}: llama.cpp file type {ftype} is not known to this llava-local")
    return LLMInfo(
        arch=str(arch), n_embd=int(n_embd), context_length=int(field_value(reader, f"{arch}.context_length", 2048)),
        file_type=names[int(ftype)], chat_template=field_value(reader, "tokenizer.chat_template"),
        our_template=field_value(reader, "llava_local.template"),
        bos=field_value(reader, "tokenizer.ggml.bos_token_id"), eos=field_value(reader, "tokenizer.ggml.eos_token_id"),
        name=str(field_value(reader, "general.name", "") or ""),
    )


def detect_template(text: str | None) -> str | None:
    """A registry template name for a GGUF's Jinja chat template (`tokenizer.chat_template`); None when nothing
    fits. (An Ollama TEMPLATE is Go text: `sources.template_for_ollama` reads those.)"""
    if not text:
        return None
    from .llm_gguf import jinja_template

    for name in TEMPLATES:
        if jinja_template(name) == text:
            return name
    if "<|im_start|>" in text:
        return "chatml"
    if "[INST]" in text:
        return "llama_2"
    if "ASSISTANT" in text and "USER" in text or "ASSISTANT:" in text:
        return "llava_v1" if "curious human" in text else "vicuna_v1"
    return None


def _choose(opts: ImportOptions, src: Source, info: LLMInfo, mm_mode: str | None) -> tuple[str, str, list[str]]:
    """(template, preprocess mode, what was assumed) in order: flag, our own keys, metadata, LLaVA-1.5 default."""
    from .sources import template_for_ollama

    # Ollama's TEMPLATE is Go text: sources knows its markers (and SYSTEM tells vicuna_v1 from llava_v1)
    template = (opts.template or (info.our_template if info.our_template in TEMPLATES else None)
                or template_for_ollama(src.template, src.system) or detect_template(info.chat_template))
    mode = opts.preprocess or (mm_mode if mm_mode in ("pad", "crop") else None)
    assumed = []
    if template is None:
        template = DEFAULT_TEMPLATE
        assumed.append(f"template {DEFAULT_TEMPLATE}")
    if mode is None:
        mode = DEFAULT_PREPROCESS
        assumed.append(f"preprocessing {DEFAULT_PREPROCESS}")
    return template, mode, assumed


def _link_or_copy(src: Path, dst: Path) -> str:
    try:
        os.link(src, dst)
        return "hard link"
    except OSError:
        shutil.copy2(src, dst)
        return "copy"


def import_pair(opts: ImportOptions, *, show_progress: bool = True,
                step_hook: Callable[[str], None] | None = None) -> ImportResult:
    """Import `opts.source` into a bundle at `opts.out` (see the module docstring)."""
    from . import mmproj_onnx

    hook = step_hook or (lambda name: None)
    src = resolve(opts)
    info = read_llm_info(src.llm)
    mm = read_mmproj(src.mmproj)
    spec = mm.spec
    if spec.out_dim != info.n_embd:
        raise ConversionError(f"{src.mmproj.name} outputs image rows of width {spec.out_dim} but {src.llm.name} "
                              f"takes {info.n_embd} (n_embd): the files are not a pair")
    if opts.quant is not None:
        if opts.quant not in LLM_FTYPES:
            raise ConversionError(f"unknown --quant {opts.quant!r}")
        if info.file_type not in UNQUANTIZED and opts.quant != info.file_type:
            raise ConversionError(f"{src.llm.name} is already quantized ({info.file_type}); re-quantizing loses "
                                  "quality: import it as it is, or start from an F16/F32 GGUF")
    template, mode, assumed = _choose(opts, src, info, spec.preprocess_mode)
    notes = []
    if assumed:
        notes.append(f"import: nothing in the files says the {' or the '.join(assumed)}: using LLaVA-1.5's "
                     "(pass --template / --preprocess to choose)")
        print(notes[-1], file=sys.stderr, flush=True)
    preprocess = PreprocessConfig(mode=mode, size=spec.image_size, mean=spec.mean, std=spec.std,
                                  resample=spec.resample or "bicubic")
    target = _prepare_target(opts.out, opts.force, (src.llm, src.mmproj))
    quant = opts.quant or info.file_type
    extra_vision = [d for d in dict.fromkeys(opts.vision_dtypes) if d != "fp32"]
    progress = Progress(3 + len(extra_vision) + int(opts.fuse_vision) + int(opts.verify), enabled=show_progress,
                        label="import")
    with staged(target, progress.note) as tmp:
        pixels = sample_pixels(preprocess)
        hook("vision")
        with progress.step(f"vision.onnx from {src.mmproj.name} ({spec.blocks} blocks, {spec.projector})"):
            mmproj_onnx.build_onnx(mm, tmp / VISION_FILES["fp32"])
        vision_files, parity, build = vision_variants(tmp, extra_vision, pixels, progress, hook,
                                                      fuse=(spec.heads, spec.width) if opts.fuse_vision else None)
        hook("llm")
        llm_name = llm_file(quant)
        if opts.quant is not None and opts.quant != info.file_type:
            from .quantize import quantize

            with progress.step(f"{llm_name} (llama.cpp quantize from {info.file_type})"):
                quantize(src.llm, tmp / llm_name, opts.quant)
                how = f"quantized from {info.file_type}"
        else:
            with progress.step(f"{llm_name} ({src.llm.name} as it is)"):
                how = _link_or_copy(src.llm.resolve(), tmp / llm_name)
        entries: dict[str, dict[str, Any]] = {}
        provenance = {
            "source": str(opts.source), "origin": src.origin, "llm_gguf": str(src.llm.resolve()),
            "mmproj": str(src.mmproj.resolve()), "llm_file": how, "converter": f"llava-local {__version__} import",
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "projector": spec.projector, "vision_blocks": spec.blocks, "mmproj_blocks_in_file": spec.blocks_in_file,
            "vision_feature_layer": spec.feature_layer, "quick_gelu": spec.quick_gelu,
            "mmproj_tensor_types": spec.tensor_types, "llm_arch": info.arch, "llm_file_type": info.file_type,
            "bos_token_id": info.bos, "eos_token_id": info.eos, "assumed": assumed,
            "ollama_params": src.params or None, **build,
        }

        def manifest(report: dict[str, Any]) -> Manifest:
            t = get_template(template)
            stops = tuple(dict.fromkeys([*t.stop_strings, *_param_stops(src.params)]))
            names = [*vision_files.values(), llm_name]
            return Manifest(
                name=opts.name or target.name, preprocess=preprocess,
                vision=VisionSpec(files=vision_files, default=next(d for d in opts.vision_dtypes if d in vision_files)
                                  if any(d in vision_files for d in opts.vision_dtypes) else "fp32",
                                  tokens_per_image=spec.tokens_per_image, embed_dim=spec.out_dim),
                llm=LLMSpec(files={quant: llm_name}, default=quant, context_length=info.context_length),
                template=template, stop_strings=stops, system_prompt=src.system,
                files={n: entries[n] if n in entries else entries.setdefault(n, file_entry(tmp / n)) for n in names},
                provenance=provenance, parity=report,
            )

        report: dict[str, Any] = {"verified": False}
        if opts.verify:
            hook("verify")
            with progress.step("self-check: ONNX vs numpy reference, prompt ids, one greedy answer"):
                write_manifest(tmp, manifest({}))
                report = self_check(mm, tmp, vision_files, pixels, template, opts.n_tokens, progress.note)
            if report["failures"]:
                raise ConversionError("self-check failed: " + "; ".join(report["failures"])
                                      + " (nothing was written; --no-verify skips the check)")
        report.update(parity)
        hook("manifest")
        with progress.step("manifest.json (sha256 of every file)"):
            final = manifest(report)
            write_manifest(tmp, final)
    return ImportResult(bundle=target, manifest=final, notes=notes)


def _param_stops(params: dict[str, Any] | None) -> list[str]:
    stop = (params or {}).get("stop") or []
    return [str(s) for s in (stop if isinstance(stop, list) else [stop])]


def self_check(mm: Any, work: Path, vision_files: dict[str, str], pixels: np.ndarray, template: str, n_tokens: int,
               say: Callable[[str], None]) -> dict[str, Any]:
    """The import's parity report (see the module docstring); `failures` lists what broke a gate."""
    from llava_local import ChatSession, GenerationConfig, RuntimeConfig, open_model
    from llava_local.events import Finished, TextChunk

    from .mmproj_onnx import reference_forward
    from .vision_onnx import cosine, run_onnx

    ref = reference_forward(mm, pixels)
    report: dict[str, Any] = {"verified": True, "reference": "numpy float64 forward of the mmproj",
                              "n_images": int(pixels.shape[0]), "vision": {}, "failures": []}
    for dtype, fname in vision_files.items():
        out = run_onnx(work / fname, pixels)
        r = {"max_abs": float(np.abs(out - ref).max()), "cosine": cosine(out, ref),
             "ref_max_abs": float(np.abs(ref).max())}
        report["vision"][dtype] = r
        say(f"vision {dtype}: max|Δ| {r['max_abs']:.2e} vs the numpy reference, cosine {r['cosine']:.6f}")
    # convert's vision gates (fp32 max|Δ| and cosine, fp16 cosine); the reference here is the numpy forward
    report["failures"] += failures({"verified": True, "vision": report["vision"]})
    t = get_template(template)
    chunks = text_chunks(t.render([Turn("user", CHECK_PROMPT, n_images=1)]))
    with open_model(str(work), RuntimeConfig(device="cpu", embedding_cache=False)) as model:
        eng = model.engine
        ids = [eng.tokenize(c, i == 0) for i, c in enumerate(chunks)]
        with_bos = eng.tokenize("", True)  # empty when the GGUF says add_bos_token false: then no BOS is expected
        stops = {s: eng.tokenize(s, False) for s in t.stop_strings if s.strip()}
        report["prompt"] = {"chunks": chunks, "ids": ids, "stop_ids": stops,
                            "bos_first": not with_bos or (bool(ids[0]) and ids[0][0] == with_bos[0])}
        if not report["prompt"]["bos_first"]:
            report["failures"].append("the prompt does not start with BOS")
        from PIL import Image

        img = work / ".check.png"
        Image.fromarray(np.clip((pixels[2].transpose(1, 2, 0) * np.array(mm.spec.std) + np.array(mm.spec.mean))
                                * 255, 0, 255).astype(np.uint8)).save(img)
        session = ChatSession(model, generation=GenerationConfig(temperature=0, max_tokens=n_tokens))
        events = list(session.ask(CHECK_PROMPT, images=[str(img)]))
        img.unlink()
    text = "".join(e.text for e in events if isinstance(e, TextChunk))
    report["answer"] = {"prompt": CHECK_PROMPT, "text": text, "finished": isinstance(events[-1], Finished),
                        "max_tokens": n_tokens}
    say(f"prompt ids: {len(ids[0])} + image + {len(ids[1])} tokens; greedy answer {text[:60]!r}")
    return report
