"""Properties of the pixel pipeline on any image: every Pillow mode, any size and aspect ratio (1 × N panoramas
included), both geometries, every resampling filter, any output size. The output is float32 (1, 3, S, S) and
finite; no intermediate image is larger than the decoded image plus O(S · max(W, H)) pixels (the old pipeline
built a max(W, H)² canvas); and bytes in any format either load or raise one ImageError."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from llava_local.errors import ImageError
from llava_local.preprocess import _BLOCK_PIXELS, RESAMPLING, PreprocessConfig, load_image, preprocess, to_pixels

MODES = ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "I", "I;16", "F"]
sizes = st.one_of(
    st.tuples(st.integers(1, 64), st.integers(1, 64)),  # small, any aspect
    st.tuples(st.integers(1, 3), st.integers(100, 6000)),  # tall and thin
    st.tuples(st.integers(100, 6000), st.integers(1, 3)),  # wide and flat
    st.tuples(st.integers(64, 400), st.integers(64, 400)),  # ordinary
)
configs = st.builds(PreprocessConfig, mode=st.sampled_from(["pad", "crop"]), size=st.integers(1, 80),
                    resample=st.sampled_from(sorted(RESAMPLING)))


def _image(mode: str, w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    if mode == "I":
        return Image.fromarray(rng.integers(-2**31, 2**31 - 1, (h, w), dtype=np.int64).astype(np.int32))
    if mode == "F":
        return Image.fromarray(rng.normal(0, 1e6, (h, w)).astype(np.float32))
    if mode in ("P", "PA"):
        return base.quantize(colors=8).convert(mode) if mode == "PA" else base.quantize(colors=8)
    return base.convert(mode)


class Allocations:
    """Records the pixel count of every image Pillow creates (Image.new, resize, crop, convert, paste copies)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.largest = 0
        real = Image.Image._new

        def _new(im, core):
            self.largest = max(self.largest, core.size[0] * core.size[1])
            return real(im, core)

        monkeypatch.setattr(Image.Image, "_new", _new)


@given(mode=st.sampled_from(MODES), size=sizes, cfg=configs, seed=st.integers(0, 2**16))
def test_any_image_gives_finite_pixels_of_the_exact_shape_in_bounded_memory(monkeypatch, mode, size, cfg, seed):
    w, h = size
    img = _image(mode, w, h, seed)
    with monkeypatch.context() as m:
        alloc = Allocations(m)
        x = to_pixels(img, cfg)
    assert x.shape == (3, cfg.size, cfg.size) and x.dtype == np.float32
    assert np.isfinite(x).all()
    s = cfg.size
    # the decoded image (converted to RGB), H(C) = S × max(W, H), one strip block, the crop path's ≤ 4 S² resize
    assert alloc.largest <= max(w * h, s * max(w, h), _BLOCK_PIXELS, 4 * s * s) + 4 * (w + h + s), (w, h, s)


@given(data=st.binary(max_size=300))
def test_any_bytes_load_or_raise_one_image_error(data):
    try:
        x = preprocess(data, PreprocessConfig(size=16))
    except ImageError as e:
        assert "\n" not in str(e)
    else:
        assert x.shape == (1, 3, 16, 16) and np.isfinite(x).all()


@given(fmt=st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "ICO", "PPM"]), size=sizes,
       cut=st.floats(0, 1), flips=st.lists(st.integers(0, 10**6), max_size=4), seed=st.integers(0, 2**16))
def test_damaged_files_of_every_format_load_or_raise_one_image_error(fmt, size, cut, flips, seed):
    w, h = size
    img = _image("RGB", min(w, 256), min(h, 256), seed)
    buf = io.BytesIO()
    img.save(buf, fmt)
    data = bytearray(buf.getvalue())
    for f in flips:  # flip bytes anywhere (headers included), then cut the file short
        data[f % len(data)] ^= 0xFF
    data = bytes(data[: max(0, int(len(data) * cut))])
    try:
        rgb = load_image(data)
    except ImageError as e:
        assert "\n" not in str(e)
    else:
        assert rgb.mode == "RGB" and rgb.width * rgb.height > 0
