"""Pixel pipeline parity: `llava_local.preprocess` equals transformers' CLIPImageProcessor (PIL path) in crop mode
and LLaVA-1.5's expand2square + CLIPImageProcessor in pad mode, on awkward images (odd sizes, EXIF rotation, RGBA,
palette, grayscale). The reference opens images as LLaVA does (`Image.open(f).convert("RGB")`) after applying the
EXIF orientation, which is what our loader documents."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from llava_local.errors import ImageError
from llava_local.preprocess import PreprocessConfig, load_image, preprocess

transformers = pytest.importorskip("transformers")


def _hf(size: int):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def _llava_expand2square(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    # Verbatim logic of llava/mm_utils.py expand2square.
    width, height = img.size
    if width == height:
        return img
    if width > height:
        result = Image.new(img.mode, (width, width), background)
        result.paste(img, (0, (width - height) // 2))
        return result
    result = Image.new(img.mode, (height, height), background)
    result.paste(img, ((height - width) // 2, 0))
    return result


def _rng_image(w: int, h: int, mode: str, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode == "L":
        return Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L")
    if mode == "RGBA":
        return Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")
    rgb = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
    if mode == "P":
        p = rgb.quantize(colors=16)
        p.info["transparency"] = 3
        return p
    return rgb


def _encode(img: Image.Image, fmt: str, exif_orientation: int | None = None) -> bytes:
    buf = io.BytesIO()
    kwargs = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif.tobytes()
    if fmt == "PNG" and img.mode == "P" and "transparency" in img.info:
        kwargs["transparency"] = img.info["transparency"]
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


CASES = {
    "odd_wide_rgb": (_rng_image(37, 23, "RGB"), "PNG", None),
    "odd_tall_rgb": (_rng_image(19, 41, "RGB", 1), "PNG", None),
    "exif_rotated_jpeg": (_rng_image(50, 30, "RGB", 2), "JPEG", 6),
    "rgba": (_rng_image(33, 45, "RGBA", 3), "PNG", None),
    "palette_transparent": (_rng_image(48, 20, "P", 4), "PNG", None),
    "grayscale": (_rng_image(25, 36, "L", 5), "PNG", None),
    "tiny_2x3": (_rng_image(2, 3, "RGB", 6), "PNG", None),
}


def _reference_rgb(data: bytes) -> Image.Image:
    rgb = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    # PIL keeps a palette image's transparent colour in `info` after convert("RGB"), and transformers 5 then
    # composites that colour onto white; LLaVA's own loader and ours keep the RGB values. Compare pixel content.
    return Image.fromarray(np.asarray(rgb))


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("size", [32, 30])
def test_crop_mode_equals_clip_image_processor(case, size):
    img, fmt, orient = CASES[case]
    data = _encode(img, fmt, orient)
    ours = preprocess(data, PreprocessConfig(mode="crop", size=size))
    ref = _hf(size)(images=_reference_rgb(data), return_tensors="np")["pixel_values"]
    assert ours.shape == ref.shape == (1, 3, size, size)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


@pytest.mark.parametrize("case", sorted(CASES))
def test_pad_mode_equals_llava_expand2square(case):
    img, fmt, orient = CASES[case]
    data = _encode(img, fmt, orient)
    cfg = PreprocessConfig(mode="pad", size=32)
    ours = preprocess(data, cfg)
    proc = _hf(32)
    background = tuple(int(x * 255) for x in proc.image_mean)
    assert background == (122, 116, 104)
    ref = proc(images=_llava_expand2square(_reference_rgb(data), background), return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_exif_rotation_is_applied():
    img = _rng_image(50, 30, "RGB", 7)
    rotated = load_image(_encode(img, "JPEG", 6))
    assert rotated.size == (30, 50)


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 20])
def test_bad_bytes_raise_image_error(data):
    with pytest.raises(ImageError):
        preprocess(data, PreprocessConfig())


def test_missing_file_raises_image_error(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "nope.png")
