"""`python -m bench.mmproj`: one mmproj's image encode, our ONNX graphs (fp32 fused, int8) vs libmtmd's CLIP, on CPU.

Same weights on both sides: a random mmproj of LLaVA-1.5-7B's vision geometry (CLIP ViT-L/14 at 336 px, 24 layers
with the legacy converter's 23 in the file, mlp2x_gelu projector 1024 → 4096 → 4096, F16 matrices) written with
gguf-py, and a one-block random LLaMA GGUF of width 4096 that libmtmd needs next to it (`mtmd_init_from_file` takes
the text model; it checks the projector's output width against it and nothing else). Our side rebuilds the mmproj
as ONNX (`converters.mmproj_onnx`), fuses it and quantizes it to int8 exactly as `llava-local import` does.
Timings: one warm-up, then `--repeats` runs of each encoder interleaved (ours, mtmd, ours, ...), the best and the
median wall time and the least process CPU time per image; one thread each unless `--threads`. Agreement: mean
per-token cosine of each output with the numpy float64 reference of LLaVA's computation and with the reference of
mtmd's own graph (`reference_forward(mtmd=True)`: CLS appended after the patches, patch 0 dropped, tanh GELU).
Prints a markdown table (for docs/benchmarks.md) and writes `bench-out/mmproj.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

WIDTH, FFN, HEADS, LAYERS, IMAGE, PATCH, LLM = 1024, 4096, 16, 23, 336, 14, 4096


def write_random_mmproj(path: Path, seed: int = 0) -> Path:
    """A random mmproj in the legacy layout of CLIP ViT-L/14-336 (23 blocks) + a 1024→4096→4096 projector."""
    import gguf

    rng = np.random.default_rng(seed)

    def mat(o: int, i: int) -> np.ndarray:
        return (rng.standard_normal((o, i), dtype=np.float32) / np.sqrt(i)).astype(np.float16)

    def vec(n: int, scale: float = 0.02, mean: float = 0.0) -> np.ndarray:
        return (mean + scale * rng.standard_normal(n, dtype=np.float32)).astype(np.float32)

    w = gguf.GGUFWriter(str(path), arch="clip", use_temp_file=False)
    for key, value in (("clip.has_text_encoder", False), ("clip.has_vision_encoder", True),
                       ("clip.has_llava_projector", True), ("clip.use_gelu", False)):
        w.add_bool(key, value)
    w.add_file_type(1)
    w.add_name("bench-random-llava-1.5-vision")
    w.add_description("image encoder for LLaVA")
    w.add_string("clip.projector_type", "mlp")
    for key, value in (("image_size", IMAGE), ("patch_size", PATCH), ("embedding_length", WIDTH),
                       ("feed_forward_length", FFN), ("projection_dim", 768), ("attention.head_count", HEADS),
                       ("block_count", LAYERS)):
        w.add_uint32(f"clip.vision.{key}", value)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-5)
    w.add_array("clip.vision.feature_layer", [LAYERS])
    w.add_array("clip.vision.image_mean", [0.48145466, 0.4578275, 0.40821073])
    w.add_array("clip.vision.image_std", [0.26862954, 0.26130258, 0.27577711])
    w.add_tensor("mm.0.weight", mat(LLM, WIDTH))
    w.add_tensor("mm.0.bias", vec(LLM))
    w.add_tensor("mm.2.weight", mat(LLM, LLM))
    w.add_tensor("mm.2.bias", vec(LLM))
    w.add_tensor("v.class_embd", vec(WIDTH, 1.0))
    w.add_tensor("v.patch_embd.weight", (rng.standard_normal((WIDTH, 3, PATCH, PATCH), dtype=np.float32)
                                         / np.sqrt(3 * PATCH * PATCH)).astype(np.float16))
    w.add_tensor("v.position_embd.weight", 0.1 * rng.standard_normal(((IMAGE // PATCH) ** 2 + 1, WIDTH),
                                                                      dtype=np.float32))
    w.add_tensor("v.pre_ln.weight", vec(WIDTH, 0.02, 1.0))
    w.add_tensor("v.pre_ln.bias", vec(WIDTH))
    for i in range(LAYERS):
        for part in ("attn_k", "attn_v", "attn_q", "attn_out"):
            w.add_tensor(f"v.blk.{i}.{part}.weight", mat(WIDTH, WIDTH))
            w.add_tensor(f"v.blk.{i}.{part}.bias", vec(WIDTH))
        w.add_tensor(f"v.blk.{i}.ln1.weight", vec(WIDTH, 0.02, 1.0))
        w.add_tensor(f"v.blk.{i}.ln1.bias", vec(WIDTH))
        w.add_tensor(f"v.blk.{i}.ffn_down.weight", mat(FFN, WIDTH))  # the legacy name of fc1
        w.add_tensor(f"v.blk.{i}.ffn_down.bias", vec(FFN))
        w.add_tensor(f"v.blk.{i}.ffn_up.weight", mat(WIDTH, FFN))
        w.add_tensor(f"v.blk.{i}.ffn_up.bias", vec(WIDTH))
        w.add_tensor(f"v.blk.{i}.ln2.weight", vec(WIDTH, 0.02, 1.0))
        w.add_tensor(f"v.blk.{i}.ln2.bias", vec(WIDTH))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_stub_llm(path: Path, n_embd: int = LLM, seed: int = 1) -> Path:
    """A one-block random LLaMA GGUF (byte vocabulary) of width `n_embd`: what libmtmd needs beside the mmproj."""
    import gguf

    rng = np.random.default_rng(seed)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    n_ff, n_head, n_vocab = 256, 32, len(tokens)
    w = gguf.GGUFWriter(str(path), arch="llama", use_temp_file=False)
    w.add_name("bench-stub")
    w.add_context_length(256)
    w.add_embedding_length(n_embd)
    w.add_block_count(1)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(1)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * n_vocab)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)

    def mat(o: int, i: int) -> np.ndarray:
        return (0.02 * rng.standard_normal((o, i), dtype=np.float32)).astype(np.float16)

    w.add_tensor("token_embd.weight", mat(n_vocab, n_embd))
    w.add_tensor("output_norm.weight", np.ones(n_embd, np.float32))
    w.add_tensor("output.weight", mat(n_vocab, n_embd))
    for name, shape in (("attn_q", (n_embd, n_embd)), ("attn_k", (n_embd, n_embd)), ("attn_v", (n_embd, n_embd)),
                        ("attn_output", (n_embd, n_embd)), ("ffn_gate", (n_ff, n_embd)), ("ffn_up", (n_ff, n_embd)),
                        ("ffn_down", (n_embd, n_ff))):
        w.add_tensor(f"blk.0.{name}.weight", mat(*shape))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(n_embd, np.float32))
    w.add_tensor("blk.0.ffn_norm.weight", np.ones(n_embd, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _stats(runs: list[float], cpu: list[float]) -> dict[str, Any]:
    return {"best": min(runs), "median": statistics.median(runs), "cpu_best": min(cpu), "runs": runs, "cpu": cpu}


def _timed(fn) -> tuple[float, float, Any]:
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t, time.process_time() - c, out


def run(out: Path, repeats: int, threads: int) -> dict[str, Any]:
    from PIL import Image

    from converters import vision_onnx
    from converters.export_llamacpp import MtmdEncoder
    from converters.mmproj import read_mmproj
    from converters.mmproj_onnx import build_onnx, reference_forward
    from converters.verify import sample_pixels
    from llava_local.preprocess import PreprocessConfig, preprocess
    from llava_local.vision import VisionEncoder

    out.mkdir(parents=True, exist_ok=True)
    mmproj, llm = out / "mmproj-bench-f16.gguf", out / "llm-stub-4096.gguf"
    if not mmproj.is_file():
        write_random_mmproj(mmproj)
    if not llm.is_file():
        write_stub_llm(llm)
    mm = read_mmproj(mmproj)
    cfg = PreprocessConfig(mode="pad", size=IMAGE)
    fp32, int8 = out / "mmproj-vision.onnx", out / "mmproj-vision-int8.onnx"
    if not fp32.is_file() or not int8.is_file():
        build_onnx(mm, fp32)
        gate = sample_pixels(cfg, n=2)
        vision_onnx.make_int8(fp32, int8, gate, min_cosine=0.0)  # random weights: measured below, not gated
        vision_onnx.fuse_fp32(fp32, HEADS, WIDTH, gate)
    rgb = np.asarray(Image.fromarray(np.random.default_rng(0).integers(0, 256, (IMAGE, IMAGE, 3), np.uint8)))
    pixels = preprocess(Image.fromarray(rgb), cfg)  # square image: mtmd's own pad is a no-op, the pixels agree
    llava_ref = reference_forward(mm, pixels)[0]
    mtmd_ref = reference_forward(mm, pixels, mtmd=True)[0]
    from converters.vision_onnx import cosine
    from llava_local.manifest import VisionSpec

    spec = VisionSpec(files={}, default="fp32", tokens_per_image=mm.spec.tokens_per_image, embed_dim=LLM)
    encoders = {"onnx fp32 (fused)": VisionEncoder(fp32, spec, device="cpu", threads=threads),
                "onnx int8": VisionEncoder(int8, spec, device="cpu", threads=threads)}
    mtmd = MtmdEncoder(mmproj, llm, n_threads=threads)
    fns = {name: (lambda e=e: e.encode(pixels)[0]) for name, e in encoders.items()}
    fns["libmtmd clip (F16 weights)"] = lambda: mtmd.encode(rgb)
    outputs = {name: fn() for name, fn in fns.items()}  # warm-up
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            wall, cpu, _ = _timed(fn)
            times[name][0].append(wall)
            times[name][1].append(cpu)
    mtmd.close()
    rows = {}
    for name, (wall, cpu) in times.items():
        o = outputs[name]
        rows[name] = {**_stats(wall, cpu), "cosine_vs_llava": cosine(o[None], llava_ref[None]),
                      "cosine_vs_mtmd_graph": cosine(o[None], mtmd_ref[None]),
                      "max_abs_vs_llava": float(np.abs(o - llava_ref).max())}
    return {"threads": threads, "repeats": repeats, "load": os.getloadavg(), "rows": rows,
            "geometry": f"CLIP ViT-L/14 {IMAGE}px, {LAYERS} blocks, mlp2x_gelu {WIDTH}->{LLM}->{LLM}, F16 mmproj"}


def table(result: dict[str, Any]) -> str:
    base = result["rows"]["libmtmd clip (F16 weights)"]["cpu_best"]
    lines = ["| encoder (same mmproj weights) | wall best / median (s) | CPU s (best) | speed vs libmtmd (CPU) | "
             "cosine vs LLaVA's computation | cosine vs mtmd's graph |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in result["rows"].items():
        lines.append(f"| {name} | {r['best']:.2f} / {r['median']:.2f} | {r['cpu_best']:.2f} | "
                     f"{base / r['cpu_best']:.2f}x | {r['cosine_vs_llava']:.4f} | {r['cosine_vs_mtmd_graph']:.4f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.mmproj", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    result = run(args.out, args.repeats, args.threads)
    (args.out / "mmproj.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['geometry']}; {args.threads} thread(s), best of {args.repeats}; load {result['load']}")
    print(table(result))


if __name__ == "__main__":
    main()
