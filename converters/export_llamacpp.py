"""Export a bundle or a checkpoint for llama.cpp, Ollama and LM Studio: mmproj + LLM GGUF + Ollama Modelfile.

Contract: `export(ExportOptions) -> ExportResult` writes into `out` (atomically: a temporary sibling directory
renamed into place at the end, nothing left behind on failure):
- `mmproj-model-f16.gguf`: the vision tower + projector in llama.cpp's legacy LLaVA-1.5 layout
  (`converters.mmproj.write_mmproj`).
- `<name>-<quant>.gguf`: the language model (a bundle's GGUF as it is, hard-linked when possible; from a
  checkpoint, written by `converters.llm_gguf` as F16 and quantized with llama.cpp when `quant` asks).
- `Modelfile`: Ollama's (`converters.sources.render_modelfile`): two FROM lines, TEMPLATE, SYSTEM, stop strings.
Where a bundle's vision weights come from: a bundle holds them only inside its ONNX graph, so the export goes back
to the bundle's source: an imported bundle's mmproj file (`provenance.mmproj`, copied as it is) or a converted
bundle's checkpoint (`provenance.source`, loaded with torch). When that source is gone, a one-line error says to
export the checkpoint instead. The exported mmproj is then rebuilt as ONNX (torch-free) and compared with the
bundle's own `vision.onnx` on generated images: the report's `vision_vs_bundle` (max |Δ|, cosine).
`MtmdEncoder` / `mtmd_embeddings(mmproj, llm, rgb)` encode images with llama.cpp's own libmtmd (tests, benchmark).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llava_local.errors import ConversionError

from .bundle import _prepare_target, staged
from .import_gguf import _link_or_copy
from .sources import _clean_name
from .verify import sample_pixels

MMPROJ_NAME = "mmproj-model-f16.gguf"
FORMATS = ("llama.cpp",)


@dataclass(frozen=True)
class ExportOptions:
    src: Path  # a bundle directory (manifest.json) or a checkpoint directory
    out: Path
    format: str = "llama.cpp"
    quant: str | None = None  # bundle: which of its GGUFs (default: the manifest's); checkpoint: f16 (default) or
    name: str | None = None  # a llama.cpp quant of it
    force: bool = False


@dataclass
class ExportResult:
    out: Path
    files: list[str]
    report: dict[str, Any] = field(default_factory=dict)


def export(opts: ExportOptions) -> ExportResult:
    """Write the llama.cpp files for `opts.src` into `opts.out` (see the module docstring)."""
    if opts.format not in FORMATS:
        raise ConversionError(f"--format {opts.format!r} is not supported; choose from {', '.join(FORMATS)}")
    src = Path(opts.src).expanduser()
    if not src.exists():
        raise ConversionError(f"not found: {src} (give a bundle directory or a checkpoint directory)")
    target = _prepare_target(opts.out, opts.force, (src,), marker="export.json")
    with staged(target) as tmp:
        if (src / "manifest.json").is_file():
            report, files = _from_bundle(src, tmp, opts)
        else:
            report, files = _from_checkpoint(src, tmp, opts)
        (tmp / "export.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return ExportResult(out=target, files=[*files, "Modelfile", "export.json"], report=report)


def _modelfile(tmp: Path, llm_name: str, template: str, stops: tuple[str, ...], system: str | None,
               params: dict[str, Any] | None = None) -> None:
    from .sources import render_modelfile

    text = render_modelfile(llm_name, MMPROJ_NAME, template, list(stops), dict(params or {}), system=system)
    (tmp / "Modelfile").write_text(text, encoding="utf-8")


def _from_bundle(bundle: Path, tmp: Path, opts: ExportOptions) -> tuple[dict[str, Any], list[str]]:
    from llava_local.manifest import load_manifest

    m = load_manifest(bundle)
    prov = m.provenance
    quant = opts.quant or m.llm.default
    if quant not in m.llm.files:
        raise ConversionError(f"--quant {quant}: this bundle has {', '.join(sorted(m.llm.files))}")
    mmproj_src = Path(str(prov.get("mmproj") or ""))
    ckpt_src = Path(str(prov.get("source") or ""))
    if prov.get("mmproj") and mmproj_src.is_file():
        _link_or_copy(mmproj_src, tmp / MMPROJ_NAME)
        how = f"copied from the imported mmproj {mmproj_src}"
    elif prov.get("source") and not prov.get("mmproj") and (ckpt_src / "config.json").is_file():
        from .layouts import load_checkpoint
        from .mmproj import write_mmproj

        ckpt = load_checkpoint(ckpt_src, vision_tower=prov.get("vision_tower"), template=m.template)
        write_mmproj(ckpt, tmp / MMPROJ_NAME, name=m.name)
        how = f"written from the source checkpoint {ckpt_src}"
    else:
        gone = prov.get("mmproj") or prov.get("source") or "nothing"
        raise ConversionError(f"bundle {bundle}: its vision weights live only in the ONNX graph and its source "
                              f"({gone}) is gone; export the checkpoint instead: llava-local export CHECKPOINT")
    name = _clean_name(opts.name or m.name)  # it becomes a file name
    llm_name = f"{name}-{quant}.gguf"
    llm_how = _link_or_copy(bundle / m.llm.files[quant], tmp / llm_name)
    report = {"source": str(bundle.resolve()), "kind": "bundle", "mmproj": how, "llm": f"{m.llm.files[quant]} "
              f"({llm_how})", "template": m.template, "preprocess": m.preprocess.mode,
              "vision_vs_bundle": vision_agreement(tmp / MMPROJ_NAME, bundle / m.vision.files["fp32"], m.preprocess)}
    if m.preprocess.mode != "pad":
        report["warning"] = ("llama.cpp pads LLaVA-1.5 images to a square; this bundle was made for centre crops, "
                             "so llama.cpp's answers will see a different picture")
    # Ollama parameters an imported bundle came with (num_ctx, temperature...) go back out; stop is ours.
    _modelfile(tmp, llm_name, m.template, m.stop_strings, m.system_prompt, prov.get("ollama_params"))
    return report, [MMPROJ_NAME, llm_name]


def _from_checkpoint(src: Path, tmp: Path, opts: ExportOptions) -> tuple[dict[str, Any], list[str]]:
    from . import llm_gguf, quantize
    from .layouts import load_checkpoint
    from .mmproj import write_mmproj

    ckpt = load_checkpoint(src)
    if ckpt.projector_type != "mlp2x_gelu":
        raise ConversionError(f"{src}: llama.cpp's LLaVA graph has no {ckpt.projector_type} projector (it applies "
                              "GELU after mm.0); only mlp2x_gelu checkpoints can be exported")
    name = _clean_name(opts.name or src.name)
    write_mmproj(ckpt, tmp / MMPROJ_NAME, name=name)
    quant = opts.quant or "f16"
    base = "f32" if quant == "f32" else "f16"
    llm_name = f"{name}-{quant}.gguf"
    llm_gguf.write_gguf(ckpt, tmp / f"{name}-{base}.gguf", base, name=name)
    if quant != base:
        quantize.quantize(tmp / f"{name}-{base}.gguf", tmp / llm_name, quant)
        (tmp / f"{name}-{base}.gguf").unlink()
    from llava_local.templates import get_template

    report = {"source": str(src.resolve()), "kind": "checkpoint", "mmproj": "written from the checkpoint",
              "llm": f"written by llava-local ({quant})", "template": ckpt.template, "preprocess": ckpt.preprocess.mode}
    _modelfile(tmp, llm_name, ckpt.template, get_template(ckpt.template).stop_strings, None)
    return report, [MMPROJ_NAME, llm_name]


def vision_agreement(mmproj: Path, bundle_onnx: Path, preprocess: Any) -> dict[str, float]:
    """The exported mmproj rebuilt as ONNX vs the bundle's own graph on generated images: max |Δ| and cosine."""
    from .mmproj import read_mmproj
    from .mmproj_onnx import build_onnx
    from .vision_onnx import cosine, run_onnx

    pixels = sample_pixels(preprocess)
    with tempfile.TemporaryDirectory(dir=mmproj.parent) as d:
        rebuilt = build_onnx(read_mmproj(mmproj), Path(d) / "rebuilt.onnx")
        a, b = run_onnx(rebuilt, pixels), run_onnx(bundle_onnx, pixels)
    return {"max_abs": float(np.abs(a - b).max()), "cosine": cosine(a, b), "ref_max_abs": float(np.abs(b).max())}


# -- libmtmd (llama.cpp's own multimodal runtime) ---------------------------------------------------------------

class MtmdEncoder:
    """libmtmd (llama.cpp's multimodal library inside llama-cpp-python) loaded once: `encode(rgb) -> (N, n_embd)`.

    mtmd preprocesses the image itself (LLaVA-1.5: pad to square with the mean colour, resize to the model size,
    normalize); give it an S×S image to compare encoders on the same pixels. ConversionError when libmtmd refuses
    the mmproj (it needs the text model beside it: the projector's output width must be the model's n_embd).
    """

    def __init__(self, mmproj: Path, llm_gguf: Path, n_threads: int = 1) -> None:
        import ctypes

        import llama_cpp
        from llama_cpp import mtmd_cpp as mt

        from llava_local import llamalog

        self._ll, self._mt, self._c = llama_cpp, mt, ctypes
        llamalog.install()
        mt.mtmd_log_set(llamalog._callback, ctypes.c_void_p(0))  # clip.cpp logs through its own hook: same sink
        llama_cpp.llama_backend_init()
        mp = llama_cpp.llama_model_default_params()
        mp.n_gpu_layers = 0
        self.model = llama_cpp.llama_model_load_from_file(str(llm_gguf).encode(), mp)
        if not self.model:
            raise ConversionError(f"llama.cpp could not load {llm_gguf}")
        params = mt.mtmd_context_params_default()
        params.use_gpu = False
        params.n_threads = n_threads
        params.print_timings = False
        params.warmup = False
        self.ctx = mt.mtmd_init_from_file(str(mmproj).encode(), self.model, params)
        if not self.ctx:
            llama_cpp.llama_model_free(self.model)
            raise ConversionError(f"libmtmd could not load {mmproj}: {llamalog.recent_errors() or 'unknown error'}")
        self.n_embd = llama_cpp.llama_model_n_embd(self.model)

    def encode(self, rgb: np.ndarray) -> np.ndarray:
        """One RGB uint8 image (H, W, 3) → its image-token embeddings (N, n_embd) float32."""
        mt, ctypes = self._mt, self._c
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        h, w = rgb.shape[:2]
        data = (ctypes.c_uint8 * rgb.size).from_buffer_copy(rgb.tobytes())
        bitmap = mt.mtmd_bitmap_init(w, h, data)
        chunks = mt.mtmd_input_chunks_init()
        try:
            text = mt.mtmd_input_text()
            marker = mt.mtmd_default_marker()
            text.text, text.text_len, text.add_special, text.parse_special = marker, len(marker), False, True
            bitmaps = (mt.mtmd_bitmap_p_ctypes * 1)(bitmap)
            if mt.mtmd_tokenize(self.ctx, chunks, ctypes.byref(text), bitmaps, 1) != 0:
                raise ConversionError("libmtmd could not tokenize the image")
            for i in range(mt.mtmd_input_chunks_size(chunks)):
                chunk = mt.mtmd_input_chunks_get(chunks, i)
                if mt.mtmd_input_chunk_get_type(chunk) != mt.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                    continue
                n = mt.mtmd_input_chunk_get_n_tokens(chunk)
                if mt.mtmd_encode_chunk(self.ctx, chunk) != 0:
                    raise ConversionError("libmtmd failed to encode the image")
                ptr = mt.mtmd_get_output_embd(self.ctx)
                return np.ctypeslib.as_array(ptr, shape=(n * self.n_embd,)).copy().reshape(n, self.n_embd)
            raise ConversionError("libmtmd produced no image chunk")
        finally:
            mt.mtmd_input_chunks_free(chunks)
            mt.mtmd_bitmap_free(bitmap)

    def close(self) -> None:
        if self.ctx:
            self._mt.mtmd_free(self.ctx)
            self.ctx = None
        if self.model:
            self._ll.llama_model_free(self.model)
            self.model = None


def mtmd_embeddings(mmproj: Path, llm_gguf: Path, rgb: np.ndarray, n_threads: int = 1) -> np.ndarray:
    """Encode one RGB uint8 image with libmtmd (see `MtmdEncoder`): (n_image_tokens, n_embd) float32."""
    enc = MtmdEncoder(mmproj, llm_gguf, n_threads)
    try:
        return enc.encode(rgb)
    finally:
        enc.close()
