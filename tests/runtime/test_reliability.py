"""Faults a hostile or unlucky user meets (issue 23), each through the real runtime: memory bombs and 16-bit images
in preprocessing, a damaged embedding cache, a corrupted model file of the right size, escape sequences in model
output. Every test here failed before its fix (checked by hand; docs/reliability.md)."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import tinyllava
from PIL import Image

from llava_local import ChatSession, GenerationConfig, RuntimeConfig, open_model
from llava_local.errors import BundleError, ImageError
from llava_local.manifest import file_entry
from llava_local.preprocess import MAX_SIDE, PreprocessConfig, load_image

REPO = Path(__file__).resolve().parents[2]
GREEDY = GenerationConfig(temperature=0, max_tokens=8)


def png_header_only(w: int, h: int, bit_depth: int = 8, colour: int = 2) -> bytes:
    """A PNG whose IHDR claims w × h and whose image data is almost nothing: a few hundred bytes at most."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True)
    return buf.getvalue()


# -- item 2: memory bombs -------------------------------------------------------------------------------------------
def test_size_limits_are_enforced_from_the_header_without_bomb_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning would be an error here
        with pytest.raises(ImageError, match=f"longest side may be {MAX_SIDE}"):
            load_image(png_bytes(Image.new("L", (1, MAX_SIDE + 1))))
        with pytest.raises(ImageError, match="MP; the limit is 67 MP"):
            load_image(png_header_only(12000, 12000))  # 144 MP claimed, ~100 bytes of data: never decoded
        with pytest.raises(ImageError, match="image too large"):
            load_image(png_header_only(30000, 30000))  # above Pillow's own DecompressionBombError level


def test_big_jpeg_is_decoded_at_reduced_scale(monkeypatch):
    import llava_local.preprocess as pp

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (192, 256, 3), dtype=np.uint8))
    jpeg, png = io.BytesIO(), io.BytesIO()
    img.save(jpeg, "JPEG")
    img.save(png, "PNG")
    monkeypatch.setattr(pp, "MAX_PIXELS", 20_000)  # 256 × 192 = 49,152 pixels: over it
    assert load_image(jpeg.getvalue()).size == (128, 96)  # draft(): the decoder made 1/4 of the pixels
    with pytest.raises(ImageError, match="image too large"):
        load_image(png.getvalue())  # no reduced decoding for PNG: refused before decoding


MEMORY_PROBE = r"""
import resource, sys
import numpy as np
from PIL import Image
from llava_local.preprocess import PreprocessConfig, to_pixels
from llava_local.preprocess import load_image  # noqa: F401  (everything imported before the limit)
with open("/proc/self/status") as f:
    vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
budget = 400 << 20  # the old pad path needed a 32768² canvas: 3.2 GB
resource.setrlimit(resource.RLIMIT_AS, (vm + budget, vm + budget))
for size in [(1, 32768), (32768, 1), (3, 30000), (30000, 7)]:
    img = Image.new("RGB", size, (200, 30, 30))
    for mode in ("pad", "crop"):
        x = to_pixels(img, PreprocessConfig(mode=mode, size=336))
        assert x.shape == (3, 336, 336) and np.isfinite(x).all(), (size, mode)
print("BOUNDED")
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to read the address-space size")
def test_extreme_aspect_ratios_fit_in_a_small_memory_budget():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", MEMORY_PROBE], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and "BOUNDED" in r.stdout, r.stderr[-2000:]


def _canvas_reference(img: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """The pipeline as LLaVA writes it: expand2square on a max(W, H)² canvas, then CLIP's resize + centre crop."""
    from llava_local.preprocess import RESAMPLING

    w, h = img.size
    if cfg.mode == "pad" and w != h:
        side = max(w, h)
        canvas = Image.new("RGB", (side, side), tuple(int(x * 255) for x in cfg.mean))
        canvas.paste(img, ((side - w) // 2, (side - h) // 2))
        img, (w, h) = canvas, (side, side)
    s = cfg.size
    new_w, new_h = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), RESAMPLING[cfg.resample])
    left, top = (new_w - s) // 2, (new_h - s) // 2
    return np.asarray(img.crop((left, top, left + s, top + s)), np.int16)


@pytest.mark.parametrize("mode", ["pad", "crop"])
@pytest.mark.parametrize("resample", ["bicubic", "bilinear", "lanczos"])
def test_bounded_geometry_equals_the_canvas_pipeline(mode, resample):
    """Ordinary and extreme shapes, up- and downscaling: pad mode within 1 level of 255, crop mode identical for
    ordinary shapes and within a few levels for panoramas (rounding of the 8-bit intermediate between the two
    passes, and Pillow's float32 box coordinates; Lanczos overshoots most on this random noise)."""
    from llava_local.preprocess import _pad_square, _resize_crop

    rng = np.random.default_rng(7)
    shapes = [(37, 23), (19, 41), (640, 480), (333, 1000), (56, 56), (5, 700), (900, 4), (1, 300), (1203, 2),
              (142, 759)]
    for w, h in shapes:
        for size in (32, 56, 336):
            cfg = PreprocessConfig(mode=mode, size=size, resample=resample)
            img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            geo = _pad_square(img, size, tuple(int(x * 255) for x in cfg.mean), resample) if mode == "pad" else \
                _resize_crop(img, size, resample)
            diff = int(np.abs(np.asarray(geo, np.int16) - _canvas_reference(img, cfg)).max())
            ordinary = max(w, h) <= 4 * min(w, h)
            tolerance = 1 if mode == "pad" else 0 if ordinary else 8 if resample == "lanczos" else 2
            assert diff <= tolerance, (w, h, size, diff)


# -- item 8: 16-bit greyscale ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_greyscale_is_scaled_not_clipped(fmt):
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    img = Image.fromarray(ramp) if fmt == "PNG" else Image.fromarray(ramp.astype(np.int32))  # I;16 / I (32-bit)
    buf = io.BytesIO()
    img.save(buf, fmt)
    assert Image.open(io.BytesIO(buf.getvalue())).mode == ("I;16" if fmt == "PNG" else "I")
    rgb = np.asarray(load_image(buf.getvalue()))
    expected = np.rint(ramp / 257.0)
    assert np.abs(rgb[..., 0].astype(float) - expected).max() <= 1
    assert (rgb == 255).mean() < 0.01  # clipping turned 99.6% of them white
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()


# -- item 4: the embedding cache ---------------------------------------------------------------------------------
def _entry_path(model, image: Path) -> Path:
    from llava_local.embcache import cache_key, image_id_of

    key = cache_key(image_id_of(image.read_bytes()), model.cache.vision_sha256, model.cache.preprocess)
    return model.cache.directory / key[:2] / f"{key}.npy"


@pytest.mark.parametrize("damage", ["empty", "torn", "2x64", "400x64", "text", "nan"])
def test_a_damaged_cache_entry_is_recomputed_once(rt_bundle, rt_images, damage):
    image = rt_images[0]
    with open_model(rt_bundle, RuntimeConfig(device="cpu", n_threads=1)) as m:
        _, fin = list(ChatSession(m, GREEDY).ask("What is this?", images=[image]))[-2:]
        path = _entry_path(m, image)
        good = path.read_bytes()
    buf = io.BytesIO()
    if damage in ("2x64", "400x64", "nan"):
        n = {"2x64": 2, "400x64": 400, "nan": 16}[damage]
        np.save(buf, np.full((n, 64), np.nan if damage == "nan" else 0.5, np.float16))
    path.write_bytes({"empty": b"", "torn": good[: len(good) // 2], "text": b"hello"}.get(damage, buf.getvalue()))
    for _ in range(2):  # the bad file is replaced by a good one, not hit forever
        with open_model(rt_bundle, RuntimeConfig(device="cpu", n_threads=1)) as m:
            events = list(ChatSession(m, GREEDY).ask("What is this?", images=[image]))
            assert events[-1].text == fin.text
            calls = m.vision.calls
    assert calls == 0 and path.read_bytes() == good  # the second run hit the rewritten entry


def test_cache_key_follows_the_vision_file_not_the_manifest(rt_bundle, rt_images, tmp_path):
    """Another vision.onnx with the manifest updated to match: new key, so no stale embeddings; the same file
    without the manifest updated (same size, other bytes): refused."""
    b = tmp_path / "b"
    shutil.copytree(rt_bundle, b)
    with open_model(b, RuntimeConfig(device="cpu", n_threads=1)) as m:
        list(ChatSession(m, GREEDY).ask("What is this?", images=[rt_images[0]]))
        first_key = m.cache.vision_sha256
    tinyllava.write_vision_onnx(b / "vision.onnx", image_size=32, patch=8, out_dim=64, seed=99)
    assert (b / "vision.onnx").stat().st_size == (rt_bundle / "vision.onnx").stat().st_size
    with pytest.raises(BundleError, match="vision.onnx .* does not match the sha256"):
        open_model(b, RuntimeConfig(device="cpu", n_threads=1))
    d = json.loads((b / "manifest.json").read_text())
    d["files"]["vision.onnx"] = file_entry(b / "vision.onnx")
    (b / "manifest.json").write_text(json.dumps(d))
    with open_model(b, RuntimeConfig(device="cpu", n_threads=1)) as m:
        list(ChatSession(m, GREEDY).ask("What is this?", images=[rt_images[0]]))
        assert m.cache.vision_sha256 != first_key and m.vision.calls == 1  # encoded again with the new graph


# -- item 7: integrity ---------------------------------------------------------------------------------------------
def _cli(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "LLAVA_LOCAL_HOME": str(home), "LLAVA_LOCAL_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "llava_local", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=120)


def test_a_corrupted_gguf_of_the_right_size_is_refused(rt_bundle, rt_images, tmp_path, _rt_home):
    b = tmp_path / "b"
    shutil.copytree(rt_bundle, b)
    data = bytearray((b / "llm-f32.gguf").read_bytes())
    for i in range(len(data) - 4096, len(data) - 16, 7):  # flip bytes in the last tensor's data: header intact
        data[i] ^= 0x5A
    (b / "llm-f32.gguf").write_bytes(bytes(data))
    r = _cli("chat", str(rt_images[0]), "--model", str(b), "--prompt", "Hi", "--max-tokens", "4", home=_rt_home)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "llm-f32.gguf" in r.stderr and "does not match the sha256" in r.stderr


def test_files_are_hashed_once_per_identity(rt_bundle, tmp_path, monkeypatch):
    import llava_local.integrity as integrity

    b = tmp_path / "b"
    shutil.copytree(rt_bundle, b)
    hashed: list[str] = []
    real = integrity.sha256_file
    monkeypatch.setattr(integrity, "sha256_file", lambda p: hashed.append(Path(p).name) or real(p))
    for _ in range(2):
        open_model(b, RuntimeConfig(device="cpu", n_threads=1)).close()
    assert sorted(hashed) == ["llm-f32.gguf", "vision.onnx"]  # the second open hashed nothing
    os.utime(b / "llm-f32.gguf", ns=(1, 1))  # a rewrite shows in the mtime: hashed again
    for rec in (integrity.cache_dir() / "verified").glob("*.json"):  # a damaged record is only a miss
        if "vision" in rec.read_text():
            rec.write_text("{not json")
    open_model(b, RuntimeConfig(device="cpu", n_threads=1)).close()
    assert sorted(hashed) == ["llm-f32.gguf", "llm-f32.gguf", "vision.onnx", "vision.onnx"]


def test_escape_sequences_from_the_model_never_reach_the_terminal(rt_bundle, rt_images, tmp_path, _rt_home):
    """A hostile bundle whose vocabulary pieces carry escape sequences (clear screen, window title, clipboard)."""
    from tiny_gguf import Vocab, write_llama_gguf

    b = tmp_path / "b"
    shutil.copytree(rt_bundle, b)
    tokens, scores, types = tinyllava.vocab()
    evil = [f"\x1b[2J\x1b]0;pwned\x07\x1b]52;c;ZXZpbA==\x1b\\\x9b1m\r{t}" if ty == 1 else t
            for t, ty in zip(tokens, types, strict=True)]
    write_llama_gguf(b / "llm-f32.gguf", Vocab(evil, scores, types), n_embd=64, ctx=512, seed=0)
    d = json.loads((b / "manifest.json").read_text())
    d["files"]["llm-f32.gguf"] = file_entry(b / "llm-f32.gguf")
    (b / "manifest.json").write_text(json.dumps(d))
    with open_model(b, RuntimeConfig(device="cpu", n_threads=1)) as m:
        raw = list(ChatSession(m, GenerationConfig(temperature=0, max_tokens=16)).ask("Hi", images=[rt_images[0]]))
    assert "\x1b]0;pwned" in raw[-1].text  # the precondition: this model does emit escape sequences
    args = ("chat", str(rt_images[0]), "--model", str(b), "--prompt", "Hi", "--temperature", "0", "--max-tokens", "16")
    for extra in ((), ("--json",)):
        r = _cli(*args, *extra, home=_rt_home)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)["answer"] if extra else r.stdout
        assert not [c for c in out if (ord(c) < 32 and c not in "\n\t") or 0x7F <= ord(c) <= 0x9F], repr(out)
        assert "pwned" not in out and "ZXZpbA" not in out  # whole sequences removed, not just their ESC bytes
