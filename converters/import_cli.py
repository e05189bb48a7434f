"""`llava-local import LLM.gguf --mmproj MMPROJ.gguf -o BUNDLE`: a llama.cpp GGUF + mmproj pair → a bundle.

Command module (entry point group `llava_local.commands`): `HELP`, `add_arguments(parser)`, `run(args) -> int`.
Sources: two paths, `ollama:NAME[:TAG]` (Ollama's local store, offline) or a folder holding one `*.gguf` plus one
`mmproj*.gguf` (LM Studio's layout). Needs no torch: the `[import]` extra (onnx, gguf) on top of the runtime.
Heavy imports happen inside `run`. Exit 0 with the bundle path on stdout; mistakes are one `ConversionError` line.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path

EXTRA = "import"
HELP = "import a llama.cpp GGUF + mmproj pair (paths, ollama:NAME, LM Studio folder) into a bundle"
VISION_DTYPES = ("fp32", "fp16", "int8")  # as llava_local.manifest.VISION_DTYPES (kept light for --help)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="the language model GGUF, ollama:NAME[:TAG], or a folder with *.gguf + "
                        "mmproj*.gguf")
    parser.add_argument("--mmproj", type=Path, default=None, help="the image encoder GGUF (mmproj-*.gguf)")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="bundle directory to write (default: the models dir under --name, else the source's name)")
    parser.add_argument("--name", default=None, help="model name (and models-dir entry when -o is not given)")
    parser.add_argument("--template", default=None,
                        help="chat template (default: from the GGUF's metadata, else vicuna_v1)")
    parser.add_argument("--preprocess", choices=("pad", "crop"), default=None,
                        help="image preprocessing (default: pad, LLaVA-1.5's, unless the mmproj says)")
    parser.add_argument("--vision-dtype", action="append", choices=VISION_DTYPES, default=None,
                        help="vision graph variants besides fp32; the first is the default (default: fp32)")
    parser.add_argument("--quant", default=None,
                        help="re-quantize an F32/F16/BF16 GGUF with llama.cpp (e.g. q4_k_m); default: keep it")
    parser.add_argument("--no-verify", action="store_true", help="skip the self-check")
    parser.add_argument("--no-fuse-vision", action="store_true", help="ship the plain fp32 vision graph")
    parser.add_argument("--force", action="store_true", help="replace an existing non-empty output directory")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def run(args: argparse.Namespace) -> int:
    from llava_local.errors import UsageError
    from llava_local.paths import models_dir

    from .import_gguf import ImportOptions, import_pair

    out = args.output
    if out is None:
        if not args.name:  # the source's own name: ollama:llava:7b → llava-7b, a folder's or a file's name
            from .sources import resolve_source

            args.name = resolve_source(args.source, str(args.mmproj) if args.mmproj else None).name
        if not args.name:
            raise UsageError("give the bundle a place: -o DIR, or --name NAME to write it into the models dir")
        out = models_dir() / args.name
    opts = ImportOptions(source=args.source, out=out, mmproj=args.mmproj, name=args.name, template=args.template,
                         preprocess=args.preprocess, vision_dtypes=tuple(args.vision_dtype or ("fp32",)),
                         quant=args.quant, force=args.force, verify=not args.no_verify,
                         fuse_vision=not args.no_fuse_vision)
    with _quiet():
        result = import_pair(opts, show_progress=not args.quiet)
    print(result.bundle)
    return 0


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime.quantization's advice (root logger) and library warnings would drown the progress lines.
    Not `converters.cli.quiet_libraries`: that one imports transformers, which import must not need."""
    import logging
    import warnings

    root = logging.getLogger()
    level = root.level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root.setLevel(logging.ERROR)
        try:
            yield
        finally:
            root.setLevel(level)

