"""`python -m bench [--quick] [--out bench-out] [--tokens N]`: build/reuse the model, measure, write the report.

Decode runs the engine with llama.cpp's extra CPU buffer types (CPU_REPACK; AMX where the build has it) forced on
and off, interleaved, each on a fresh model with the runtime's default vision graph (int8 on CPU when gated), so
the report puts the defaults' image encode, prefill and decode side by side with and without the repack buffers.
"on" runs only where `cpuprobe.extra_buffers_safe` says the extra buffer types cannot crash this machine.

Runs are interleaved (engine, raw, engine, raw, ...) and the best of each is reported next to the median: other
processes on a shared machine only ever slow a run down, so the best run is the closest to the machine's speed.
Each run also reports tokens per second of process CPU time, which other processes barely disturb when the
runtimes use one thread (`--threads 1`): on a busy machine that is the number to compare.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

from . import build, decode, report, vision

REPO = Path(__file__).resolve().parents[1]


def _image(out: Path, size: int) -> Path:
    import numpy as np
    from PIL import Image

    path = out / "image.png"
    if not path.is_file():
        rng = np.random.default_rng(0)
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size + 37, size + 91, 3), dtype=np.uint8)).save(buf, "PNG")
        path.write_bytes(buf.getvalue())
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--out", type=Path, default=REPO / "bench-out", help="cache dir for the model (default bench-out)")
    ap.add_argument("--quick", action="store_true", help="small model, fewer runs (a smoke test of the bench itself)")
    ap.add_argument("--tokens", type=int, default=64, help="tokens generated per decode run (default 64)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per measurement (default 3)")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads for every runtime (default: all cores this process may use)")
    ap.add_argument("--report", type=Path, default=REPO / "docs" / "benchmarks.md")
    ap.add_argument("--render", action="store_true", help="only re-render the report from the last results.json")
    ap.add_argument("--vision-threads", type=lambda v: [int(x) for x in v.split(",")], default=None,
                    help="thread counts for the image-encode section, e.g. 1,2 (default: --threads)")
    ap.add_argument("--vision-only", action="store_true",
                    help="measure only the image encoders; the decode numbers come from the last results.json")
    args = ap.parse_args(argv)
    if args.render:
        results_file = args.out / ("quick" if args.quick else "full") / "results.json"
        args.report.write_text(report.render(json.loads(results_file.read_text()), quick=args.quick))
        print(f"bench: wrote {args.report} from {results_file}")
        return 0
    os.environ.setdefault("LLAVA_LOCAL_HOME", str(args.out / "home"))  # keep the user's cache out of it
    sizes = build.QUICK if args.quick else build.BenchSizes()
    out = args.out / ("quick" if args.quick else "full")
    t_start = time.perf_counter()
    load_before = os.getloadavg()
    ckpt, bundle = build.ensure_bundle(out, sizes)
    t_built = time.perf_counter()

    from llava_local.cpuprobe import _cpu_flags, build_has_amx, extra_buffers_ok, extra_buffers_safe
    from llava_local.engine import default_threads
    from llava_local.manifest import load_manifest
    from llava_local.preprocess import preprocess

    manifest = load_manifest(bundle)
    threads = args.threads or default_threads()
    image = _image(out, sizes.image_size)
    results: dict = {"sizes": sizes.__dict__, "threads": threads, "decode": {}, "vision": {}, "vision_by_threads": {},
                     "amx_advertised": "amx_tile" in _cpu_flags().split(), "build_has_amx": build_has_amx()}
    if args.vision_only:  # keep the last run's decode numbers, measure the image encoders again
        last = json.loads((out / "results.json").read_text())
        results["decode"], threads = last["decode"], last["threads"]
        results["threads"] = threads
        results["decode_from_earlier_run"] = True
    for quant in () if args.vision_only else ("q4_k_m", "f16"):
        gguf = bundle / manifest.llm.files[quant]
        extra = extra_buffers_ok(gguf, quant)  # the runtime's default on this machine
        settings = (True, False) if extra_buffers_safe(gguf, quant) else (False,)  # never force a crash
        runs: dict[bool, list] = {s: [] for s in settings}
        raw = []
        for i in range(args.repeats):
            for repack in settings if i % 2 == 0 else settings[::-1]:  # alternate the order: no setting goes first
                e = decode.engine_decode(bundle, quant, image, args.tokens, threads, repack=repack)
                runs[repack].append(e)
                print(f"bench: {quant} engine repack {'on ' if repack else 'off'} image ({e['vision_dtype']}) "
                      f"{e['image_seconds']:.2f} s, prefill {e['prefill_cpu_seconds']:.2f} CPU-s, decode "
                      f"{e['tokens_per_second']:.1f} tok/s ({e['tokens_per_cpu_second']:.1f} per CPU-s)", flush=True)
            e0 = runs[extra][0]
            raw.append(decode.raw_decode(gguf, e0["n_prompt"], args.tokens, threads, extra, e0["n_ctx"]))
            print(f"bench: {quant} raw {raw[-1]['tokens_per_second']:.1f} tok/s "
                  f"({raw[-1]['tokens_per_cpu_second']:.1f} per CPU-s)", flush=True)
        results["decode"][quant] = {"engine": runs[extra], "raw": raw, "extra_buffers": extra,
                                    "repack": {"on" if k else "off": v for k, v in runs.items()},
                                    "file_mib": gguf.stat().st_size / 2**20}
    if not args.vision_only:
        hf = decode.hf_decode(ckpt, results["decode"]["q4_k_m"]["engine"][0]["n_prompt"], min(args.tokens, 32),
                              threads)
        results["decode"]["transformers_eager_fp32"] = hf
        print(f"bench: transformers eager {hf['tokens_per_second']:.1f} tok/s", flush=True)

    pixels = preprocess(image, manifest.preprocess)
    by_threads = results["vision_by_threads"]
    graphs = vision.fp32_graphs(bundle, ckpt, out)  # built once, timed at every thread count
    int8 = build.int8_graph(bundle, out)
    for n in args.vision_threads or [threads]:
        by_threads[str(n)] = _vision(bundle, ckpt, manifest, graphs, int8, pixels, args.repeats, n)
    results["vision"] = by_threads.get(str(threads)) or next(iter(by_threads.values()))  # the table at --threads

    results["build_seconds"] = t_built - t_start
    results["measure_seconds"] = time.perf_counter() - t_built
    results["loadavg_before"], results["loadavg_after"] = load_before, os.getloadavg()
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    text = report.render(results, quick=args.quick)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(report.keep_sections(text, args.report))
    print(f"bench: wrote {args.report} ({time.perf_counter() - t_start:.0f}s in all)")
    return 0


def _vision(bundle: Path, ckpt: Path, manifest, graphs: dict[str, Path], int8: tuple[Path | None, float | None],
            pixels, repeats: int, threads: int) -> dict:
    """Image encode at `threads`: ONNX fp32 plain export and fused (the converter's default), int8, torch eager."""
    res: dict = {}
    res["onnx_fp32"] = vision.onnx_encode(graphs["plain"], manifest.vision, pixels, repeats, threads)
    res["onnx_fp32_fused"] = vision.onnx_encode(graphs["fused"], manifest.vision, pixels, repeats, threads)
    res["onnx_fp32_fused"]["in_bundle"] = graphs["fused"].parent == bundle
    int8_path, cos = int8
    if int8_path is not None:
        res["onnx_int8"] = vision.onnx_encode(int8_path, manifest.vision, pixels, repeats, threads)
        res["onnx_int8"]["cosine_vs_fp32"] = cos
        res["onnx_int8"]["in_bundle"] = "int8" in manifest.vision.files
    res["torch_eager_fp32"] = vision.torch_encode(ckpt, pixels, repeats, threads)
    for k, v in res.items():
        print(f"bench: vision {k} ({threads} thread{'s' if threads > 1 else ''}) {v['seconds']:.2f} s/image wall, "
              f"{v['cpu_seconds']:.2f} CPU-s best", flush=True)
    return res


if __name__ == "__main__":
    sys.exit(main())
