"""`llava-local export BUNDLE|CHECKPOINT --format llama.cpp -o DIR`: mmproj + LLM GGUF + Ollama Modelfile.

Command module (entry point group `llava_local.commands`): `HELP`, `add_arguments(parser)`, `run(args) -> int`.
A bundle made by `import` exports without torch (its mmproj is copied); a checkpoint, or a bundle converted from
one, needs the `[convert]` extra (the vision weights are read from the checkpoint). Exit 0 with the output
directory on stdout; mistakes are one `ConversionError` line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

EXTRA = "import"  # a bundle from a checkpoint needs [convert] too (torch): named when missing
HELP = "export a bundle or checkpoint for llama.cpp / Ollama / LM Studio (mmproj + GGUF + Modelfile)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", type=Path, help="a bundle directory or a LLaVA checkpoint directory")
    parser.add_argument("--format", default="llama.cpp", choices=("llama.cpp",), help="output format")
    parser.add_argument("-o", "--output", type=Path, required=True, help="directory to write")
    parser.add_argument("--quant", default=None, help="bundle: which of its GGUFs (default: its default); "
                        "checkpoint: f16 (default), f32 or a llama.cpp quant such as q4_k_m")
    parser.add_argument("--name", default=None, help="file name stem of the LLM GGUF (default: the model's name)")
    parser.add_argument("--force", action="store_true", help="replace an existing non-empty output directory")


def run(args: argparse.Namespace) -> int:
    from .cli import quiet_libraries
    from .export_llamacpp import ExportOptions, export

    with quiet_libraries():
        result = export(ExportOptions(src=args.src, out=args.output, format=args.format, quant=args.quant,
                                      name=args.name, force=args.force))
    va = result.report.get("vision_vs_bundle")
    if va:
        import sys

        print(f"export: the mmproj reproduces the bundle's vision graph to max|Δ| {va['max_abs']:.1e} "
              f"(cosine {va['cosine']:.6f})", file=sys.stderr)
    print(result.out)
    return 0
