"""`llava-local info [BUNDLE] [--verify] [--json]`: what a bundle holds.

Contract: prints the manifest summary (name, template, preprocessing, vision and LLM files, context, stop strings,
the questions the bundle suggests), every file with its size, provenance and the converter's parity report, and
which vision graph the runtime runs on CPU / CUDA when no --vision-dtype is given, where that is not the manifest's
default. `--verify` re-hashes every file against the manifest (a mismatch is a BundleError: one line, exit 1).
`--json` prints one JSON object instead. BUNDLE is a path or an installed model name; without it, the default model.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..bundle import preferred_vision_dtype
from ..manifest import load_manifest, verify_files
from ..models import resolve_model

HELP = "show a bundle's manifest, files and parity report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", nargs="?", default=None, metavar="BUNDLE",
                        help="bundle directory or installed model name (default: the default model)")
    parser.add_argument("--verify", action="store_true", help="re-hash every file against the manifest (slow)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


def _flat(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for k, v in d.items():
        if isinstance(v, dict):
            rows += _flat(v, f"{prefix}{k}.")
        else:
            rows.append((f"{prefix}{k}", v))
    return rows


def run(args: argparse.Namespace) -> int:
    bundle = resolve_model(args.bundle)
    manifest = load_manifest(bundle)
    if args.verify:
        verify_files(bundle, manifest)
    picks = {backend: preferred_vision_dtype(manifest, backend) for backend in ("CPU", "CUDA")}
    if args.json:
        out = {"bundle": str(bundle), "verified": bool(args.verify), "manifest": manifest.to_dict(),
               "vision_dtype_by_backend": picks}
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return 0
    m = manifest
    p = m.preprocess
    used = ", ".join(f"{d} on {b}" for b, d in picks.items() if d != m.vision.default)
    lines = [
        f"{m.name}  ({bundle})",
        f"  template        {m.template}" + ("  (custom system prompt)" if m.system_prompt else ""),
        f"  preprocess      {p.mode} {p.size}x{p.size} {p.resample}",
        f"  vision          {', '.join(f'{k}={v}' for k, v in m.vision.files.items())} (default {m.vision.default}"
        f"{'; runs ' + used if used else ''});"
        f" {m.vision.tokens_per_image} tokens x {m.vision.embed_dim} per image",
        f"  llm             {', '.join(f'{k}={v}' for k, v in m.llm.files.items())} (default {m.llm.default})",
        f"  context         {m.llm.context_length} tokens",
        f"  stop strings    {', '.join(repr(s) for s in m.stop_strings) or '-'}",
        *(f"  {'try asking' if i == 0 else '':<16}{s}" for i, s in enumerate(m.suggested_prompts)),
        "  files",
        *(f"    {name:<28} {_size(e['size']):>10}  sha256 {e['sha256'][:16]}…" for name, e in m.files.items()),
    ]
    if m.provenance:
        lines += ["  provenance", *(f"    {k}: {v}" for k, v in _flat(m.provenance))]
    lines += ["  parity", *(f"    {k}: {v}" for k, v in _flat(m.parity))] if m.parity else ["  parity          none"]
    if args.verify:
        lines.append(f"  verified        all {len(m.files)} files match their sha256")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
