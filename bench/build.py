"""Build (or reuse) the benchmark checkpoint and bundle under `bench-out/`.

Contract: `ensure_bundle(out_dir, sizes) -> (checkpoint_dir, bundle_dir)`. The checkpoint is a llava-hf directory
written by `training.tiny.make_tiny_llava_hf` with benchmark sizes and no warm-up training (random weights);
the bundle is made by `converters.bundle.convert` (q4_k_m + f16, vision fp32 + int8; parity verification off:
this is about speed, and the converter's own tests cover parity). A `sizes.json` next to them records what
was built; a different size request rebuilds.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class BenchSizes:
    hidden: int = 1024
    ffn: int = 2816
    layers: int = 16
    heads: int = 16
    kv_heads: int = 16
    vocab_rows: int = 32064  # embedding rows; the tokenizer itself is small, the rest are padding pieces
    context: int = 2048
    vision_hidden: int = 1024  # CLIP ViT-L/14 at 336 px: 24 layers, 16 heads, 576 patches
    vision_ffn: int = 4096
    vision_layers: int = 24
    vision_heads: int = 16
    image_size: int = 336
    patch: int = 14

    def llm_params(self) -> int:
        attn = self.hidden * self.hidden * 2 + self.hidden * (self.hidden // self.heads * self.kv_heads) * 2
        return self.layers * (attn + 3 * self.hidden * self.ffn) + 2 * self.vocab_rows * self.hidden


QUICK = BenchSizes(hidden=512, ffn=1536, layers=4, heads=8, kv_heads=8, vocab_rows=8192, vision_hidden=256,
                   vision_ffn=1024, vision_layers=6, vision_heads=4, image_size=224)


def _log(msg: str) -> None:
    print(f"bench: {msg}", flush=True)


def ensure_checkpoint(out: Path, sizes: BenchSizes) -> Path:
    from training.tiny import TinySizes, make_tiny_llava_hf

    ckpt = out / "checkpoint"
    stamp = out / "sizes.json"
    want = asdict(sizes)
    if ckpt.is_dir() and stamp.is_file() and json.loads(stamp.read_text()) == want:
        return ckpt
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    _log(f"building a random checkpoint (LLM ~{sizes.llm_params() / 1e6:.0f}M params, CLIP {sizes.vision_layers}x"
         f"{sizes.vision_hidden} at {sizes.image_size}px)")
    tiny = TinySizes(
        vocab_pieces=512, vocab_rows=sizes.vocab_rows, hidden=sizes.hidden, ffn=sizes.ffn, layers=sizes.layers,
        heads=sizes.heads, kv_heads=sizes.kv_heads, context=sizes.context, vision_hidden=sizes.vision_hidden,
        vision_ffn=sizes.vision_ffn, vision_layers=sizes.vision_layers, vision_heads=sizes.vision_heads,
        image_size=sizes.image_size, patch=sizes.patch, init_std=0.02, warmup_steps=0,
    )
    make_tiny_llava_hf(ckpt, sizes=tiny, seed=0)
    stamp.write_text(json.dumps(want, indent=2))
    _log(f"checkpoint ready in {time.perf_counter() - t0:.0f}s")
    return ckpt


def ensure_bundle(out: Path, sizes: BenchSizes) -> tuple[Path, Path]:
    ckpt = ensure_checkpoint(out, sizes)
    bundle = out / "bundle"
    if (bundle / "manifest.json").is_file():
        return ckpt, bundle
    from converters.bundle import ConvertOptions, convert

    t0 = time.perf_counter()
    _log("converting with converters.bundle.convert (q4_k_m + f16, vision fp32 + int8)")
    try:
        convert(ConvertOptions(src=ckpt, out=bundle, quants=("q4_k_m", "f16"), vision_dtypes=("fp32", "int8"),
                               verify=False, name="bench-random", force=True))
    except Exception as e:  # the int8 gate may reject random weights: convert without int8, then force it
        _log(f"convert with int8 failed ({e}); converting fp32 only")
        convert(ConvertOptions(src=ckpt, out=bundle, quants=("q4_k_m", "f16"), vision_dtypes=("fp32",),
                               verify=False, name="bench-random", force=True))
    _log(f"bundle ready in {time.perf_counter() - t0:.0f}s")
    return ckpt, bundle


def int8_graph(bundle: Path, out: Path) -> tuple[Path | None, float | None]:
    """The bundle's int8 vision graph, or one made here without the parity gate (random weights rarely pass it)."""
    from llava_local.manifest import load_manifest

    m = load_manifest(bundle)
    if "int8" in m.vision.files:
        return bundle / m.vision.files["int8"], m.parity.get("int8_gate", {}).get("cosine")
    path = out / "vision-int8-ungated.onnx"
    import numpy as np

    from converters.vision_onnx import make_int8
    from llava_local.preprocess import preprocess

    rng = np.random.default_rng(0)
    pixels = np.concatenate([preprocess(_png(rng, m.preprocess.size), m.preprocess) for _ in range(2)])
    cos = make_int8(bundle / m.vision.files["fp32"], path, pixels, min_cosine=-1.0)
    return path, cos


def _png(rng, size: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype="uint8")).save(buf, "PNG")
    return buf.getvalue()
