"""`llava-local convert SRC -o BUNDLE`: a LLaVA checkpoint → an offline bundle (ONNX vision + GGUF LLM).

Contract (a `llava_local.commands` entry point): `HELP`, `EXTRA`, `add_arguments(parser)` and `run(args) -> int`.
Heavy imports (torch, transformers, onnx, gguf) happen inside `run`. Exit 0 with the bundle path on stdout; user
mistakes and failed parity raise `ConversionError`, which `llava_local.cli.main` prints as one line (exit 1).
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path

from llava_local.manifest import DEFAULT_LLM_QUANT, LLM_QUANTS, VISION_DTYPES

HELP = "convert a LLaVA checkpoint into a bundle (needs the [convert] extra)"
EXTRA = "convert"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", type=Path, help="checkpoint directory: llava-hf, original LLaVA, or `llava-local train` "
                        "output")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="bundle directory to write (default: the models dir under --name)")
    parser.add_argument("--quant", action="append", choices=list(LLM_QUANTS), default=None,
                        help="GGUF quantization; repeat for several, the first is the default "
                        f"(default: {DEFAULT_LLM_QUANT})")
    parser.add_argument("--vision-dtype", action="append", choices=list(VISION_DTYPES), default=None,
                        help="vision graph variants besides fp32; the first is the default (default: fp32)")
    parser.add_argument("--vision-tower", type=Path, default=None,
                        help="local CLIP directory for an original-layout checkpoint (overrides mm_vision_tower)")
    parser.add_argument("--template", default=None, help="chat template name (default: from the checkpoint or "
                        "vicuna_v1)")
    parser.add_argument("--name", default=None, help="model name in the manifest (default: the output dir name)")
    parser.add_argument("--suggest", action="append", default=None, metavar="QUESTION",
                        help="a question this model answers well, shown to new users (repeat for several)")
    parser.add_argument("--no-verify", action="store_true", help="skip the parity check against torch")
    parser.add_argument("--no-fuse-vision", action="store_true",
                        help="ship the plain fp32 vision graph (no onnxruntime attention/LayerNorm/GELU fusion)")
    parser.add_argument("--force", action="store_true", help="replace an existing non-empty output directory")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def run(args: argparse.Namespace) -> int:
    from llava_local.errors import UsageError
    from llava_local.paths import models_dir

    from .bundle import ConvertOptions, convert

    out = args.output
    if out is None:
        if not args.name:
            raise UsageError("give the bundle a place: -o DIR, or --name NAME to write it into the models dir")
        out = models_dir() / args.name
    _require()
    opts = ConvertOptions(
        src=args.src, out=out, quants=tuple(args.quant or (DEFAULT_LLM_QUANT,)),
        vision_dtypes=tuple(args.vision_dtype or ("fp32",)), vision_tower=args.vision_tower,
        template=args.template, name=args.name, verify=not args.no_verify, force=args.force,
        fuse_vision=not args.no_fuse_vision, suggested_prompts=tuple(args.suggest or ()),
    )
    with quiet_libraries():
        result = convert(opts, show_progress=not args.quiet)
    print(result.bundle)
    return 0


def _require() -> None:
    """One line instead of a traceback when the [convert] extra is not installed."""
    import importlib.util

    from llava_local.errors import ConversionError

    needed = ("torch", "transformers", "onnx", "onnxscript", "gguf", "sentencepiece", "safetensors", "llama_cpp",
              "onnxruntime")
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        raise ConversionError(f"convert needs {', '.join(missing)}: pip install 'llava-local[convert]'")


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """transformers' progress bars, onnxruntime.quantization's advice (root logger) and library warnings
    would drown the progress lines; everything is restored afterwards (tests call `main` in-process)."""
    import logging
    import warnings

    root = logging.getLogger()
    level = root.level
    try:
        from transformers.utils import logging as tlog
    except ImportError:
        tlog = None
    verbosity = tlog.get_verbosity() if tlog else None
    bars = tlog.is_progress_bar_enabled() if tlog else False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        root.setLevel(logging.ERROR)
        if tlog:
            tlog.set_verbosity_error()
            tlog.disable_progress_bar()
        try:
            yield
        finally:
            root.setLevel(level)
            if tlog:
                tlog.set_verbosity(verbosity)
                if bars:
                    tlog.enable_progress_bar()
