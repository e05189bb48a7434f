"""Image preprocessing: file → pixel tensor, exactly as the bundle's manifest says.

Contract: `preprocess(image, cfg)` returns float32 `(1, 3, S, S)` (NCHW) in the normalized space the
vision encoder was trained/exported with. Training and the converters import this same module, so there is
one pixel pipeline and no drift between training, conversion and inference.

Two modes, as in LLaVA:
- "pad" (LLaVA-1.5, `image_aspect_ratio="pad"`): paste the image centred on a square canvas of side
  max(W, H) filled with the mean colour `int(mean*255)`, then resize + centre-crop (a no-op crop here).
- "crop" (LLaVA v1, CLIPImageProcessor defaults): resize the shortest edge to S, centre-crop S×S.
Both then scale by 1/255 and normalize with mean/std per channel.

Bounded memory (docs/reliability.md): `load_image` refuses, from the header alone and before decoding, any
image with a side over `MAX_SIDE` or more than `MAX_PIXELS` pixels (a JPEG over the pixel limit is decoded at
1/2, 1/4 or 1/8 scale with `draft()` instead, when that brings it under). The geometry never materialises the
max(W, H)² canvas or a shortest-edge-resized panorama: Pillow's resampling is separable (one axis at a time, 8 bits
in between), so `to_pixels` runs the two one-axis passes itself on the part of the canvas whose output is not plain
fill colour (pad) or on the window the centre crop reads (crop), with Pillow's `box` selecting the source region.
Peak memory is the decoded image plus S × max(W, H) pixels plus one 1 MP block, whatever the aspect ratio; the
output equals the canvas pipeline within 1 level of 255 in pad mode, exactly in crop mode up to 4:1 and within a
few levels past it (measured in docs/reliability.md, tested in tests/runtime/test_reliability.py).
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

RESAMPLING = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}
# Half-width of each filter in output pixels (Pillow's own supports); a little extra margin is added below.
_SUPPORT = {"bicubic": 2.0, "bilinear": 1.0, "nearest": 0.5, "lanczos": 3.0}

# The largest images accepted, checked on the header before any pixel is decoded. 64 MP (8192 × 8192) decodes to
# 192 MB of RGB, under Pillow's own bomb warning (89.5 MP); a photo from a 108/200 MP phone is a JPEG and decodes
# at 1/2 or 1/4 scale through draft(). A side of 32768 allows long panoramas and screenshots; the vision encoder
# sees S × S (336) pixels either way.
MAX_PIXELS = 8192 * 8192
MAX_SIDE = 32768
# Modes holding more than 8 bits per sample: Pillow's convert("RGB") clips them at 255 instead of scaling.
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# Pixels per block of rows in the pad geometry's horizontal pass (3 MB of RGB).
_BLOCK_PIXELS = 1 << 20


@dataclass(frozen=True)
class PreprocessConfig:
    """How pixels are prepared for the vision encoder (stored in the manifest)."""

    mode: Literal["pad", "crop"] = "pad"
    size: int = 336
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    resample: str = "bicubic"

    def __post_init__(self) -> None:
        if self.mode not in ("pad", "crop"):
            raise ValueError(f"preprocess mode must be 'pad' or 'crop', not {self.mode!r}")
        if self.resample not in RESAMPLING:
            raise ValueError(f"unknown resampling {self.resample!r}; use one of {sorted(RESAMPLING)}")
        if not 0 < self.size <= 4096 or len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("preprocess needs a size in 1..4096 and 3-channel mean/std")
        if not all(math.isfinite(m) and 0 <= m <= 1 for m in self.mean):
            raise ValueError("preprocess mean values must be in [0, 1]")
        if not all(math.isfinite(s) and s > 0 for s in self.std):
            raise ValueError("preprocess std values must be positive")

    def to_dict(self) -> dict:
        return {"mode": self.mode, "size": self.size, "mean": list(self.mean), "std": list(self.std),
                "resample": self.resample}

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessConfig:
        return cls(mode=d["mode"], size=int(d["size"]), mean=tuple(float(x) for x in d["mean"]),
                   std=tuple(float(x) for x in d["std"]), resample=d.get("resample", "bicubic"))


def _check_size(w: int, h: int, name: str) -> None:
    if w <= 0 or h <= 0:
        raise ImageError(f"not a readable image: {name} (size {w}x{h})")
    if max(w, h) > MAX_SIDE:
        raise ImageError(f"image too large ({w}x{h}; the longest side may be {MAX_SIDE} pixels): {name}")
    if w * h > MAX_PIXELS:
        raise ImageError(f"image too large ({w}x{h} = {w * h / 1e6:.0f} MP; the limit is "
                         f"{MAX_PIXELS / 1e6:.0f} MP): {name}")


def _open_bounded(fp: io.BytesIO | Path, name: str) -> Image.Image:
    """Open, check the header's size against the limits (drafting big JPEGs), then decode."""
    with warnings.catch_warnings():
        # Our own limits are stricter than Pillow's bomb warning, which would otherwise print on stderr.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img = Image.open(fp)
    w, h = img.size
    if img.format == "JPEG" and w * h > MAX_PIXELS and max(w, h) <= MAX_SIDE:
        # DCT scaling: the decoder itself produces 1/2, 1/4 or 1/8 of the pixels, never the full image.
        scale = next((k for k in (2, 4, 8) if (w // k) * (h // k) <= MAX_PIXELS), 8)
        img.draft(img.mode, (max(1, w // scale), max(1, h // scale)))
    _check_size(img.width, img.height, name)
    img.load()
    return img


def load_image(source: str | Path | bytes | Image.Image) -> Image.Image:
    """Open an image from a path or bytes (within MAX_SIDE/MAX_PIXELS), apply EXIF orientation, convert to RGB."""
    name = "<image>" if isinstance(source, Image.Image) else "<bytes>" if isinstance(source, bytes) else str(source)
    if isinstance(source, Image.Image):
        img = source
        _check_size(img.width, img.height, name)
    else:
        try:
            fp = io.BytesIO(source) if isinstance(source, bytes) else Path(source).expanduser()
            if not isinstance(fp, io.BytesIO) and not fp.is_file():
                raise ImageError(f"image not found: {name}")
            img = _open_bounded(fp, name)
        except ImageError:
            raise
        except Image.DecompressionBombError:  # Pillow's own check in Image.open, for claims past 2 × its limit
            claimed = 2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6
            raise ImageError(f"image too large (its header claims more than {claimed:.0f} MP; the limit is "
                             f"{MAX_PIXELS / 1e6:.0f} MP): {name}") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, MemoryError) as e:
            raise ImageError(f"not a readable image: {name} ({e.__class__.__name__})") from None
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a malformed EXIF block must not make the picture unreadable: keep it unrotated
        pass
    try:
        return to_rgb(img)
    except (ValueError, OSError) as e:  # a pixel format Pillow decodes but cannot convert, or data cut short
        raise ImageError(f"unsupported image ({img.mode} pixels, {e.__class__.__name__}): {name}") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode → 8-bit RGB, scaling 16-bit samples (convert("RGB") would clip them at 255)."""
    if img.mode == "RGB":
        return img
    if img.mode in _WIDE_MODES:
        # 16-bit greyscale PNG/TIFF: 0..65535 → 0..255 (v / 257 maps both ends exactly); "I" (32-bit) likewise,
        # clipped to the 16-bit range it holds for every PNG/TIFF Pillow opens as "I".
        v = np.asarray(img).astype(np.float64)
        grey = np.clip(np.rint(np.clip(v, 0, 65535) / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # palette images with transparency go through RGBA first so PIL does not warn
    return img.convert("RGB")


def _touched(n_out: int, scale: float, support: float, lo: int, hi: int, n_in: int) -> tuple[int, int, int, int]:
    """Outputs [o0, o1) of a 1-D resize (n_in → n_out, `scale` = n_in/n_out) whose filter window can reach source
    pixels [lo, hi), and the source span [s0, s1) those outputs read. Outputs outside [o0, o1) read only fill."""
    reach = support * max(scale, 1.0) + 2  # Pillow's window half-width in source pixels, plus rounding margin
    o0 = max(0, math.floor((lo - reach) / scale) - 1)
    o1 = min(n_out, math.ceil((hi + reach) / scale) + 1)
    s0 = max(0, math.floor(o0 * scale - reach) - 1)
    s1 = min(n_in, math.ceil(o1 * scale + reach) + 1)
    return o0, o1, s0, s1


def _pad_square(img: Image.Image, size: int, fill: tuple[int, int, int], resample: str) -> Image.Image:
    """expand2square(img, fill) resized to size × size, without building the max(W, H)² canvas.

    Canvas C (side × side) holds the image at (ox, oy). Resizing C is, up to the 8-bit rounding between the two
    passes, H (width side → size) then V (height side → size). H of a fill row is fill, so H(C) is a size × side
    fill canvas with H of the image's rows pasted at oy; H of those rows only differs from fill in the columns
    whose window reaches the image, computed on a strip of C's columns. V then runs on H(C): size × side pixels.
    Peak: the image, H(C) and one block of the strip (_BLOCK_PIXELS)."""
    w, h = img.size
    side = max(w, h)
    if side == size and w == h:
        return img
    method, scale = RESAMPLING[resample], side / size
    ox, oy = (side - w) // 2, (side - h) // 2
    o0, o1, s0, s1 = _touched(size, scale, _SUPPORT[resample], ox, ox + w, side)
    hpass = Image.new("RGB", (size, side), fill)
    # The horizontal pass is row by row, so it runs on blocks of rows: a strip of C (the image and the fill
    # beside it, columns s0..s1) is never more than _BLOCK_PIXELS, even for a 1-pixel-wide, 32768-tall image.
    step = max(1, _BLOCK_PIXELS // (s1 - s0))
    for y in range(0, h, step):
        rows = min(step, h - y)
        strip = Image.new("RGB", (s1 - s0, rows), fill)
        strip.paste(img.crop((0, y, w, y + rows)), (ox - s0, 0))
        if size != side:
            strip = strip.resize((o1 - o0, rows), method, box=(o0 * scale - s0, 0, o1 * scale - s0, rows))
        else:
            strip = strip.crop((o0 - s0, 0, o1 - s0, rows))
        hpass.paste(strip, (o0, oy + y))
    return hpass if side == size else hpass.resize((size, size), method)


def _resize_crop(img: Image.Image, size: int, resample: str) -> Image.Image:
    """CLIPImageProcessor geometry: shortest edge → `size` (long edge truncated), then centre crop.

    A panorama would first become size × (size·W/H) pixels; past 4·size² pixels only the cropped window is
    resampled instead: the horizontal pass over the source rows the window reads, then the vertical pass (each
    with Pillow's `box`, one axis at a time as Pillow's own two-pass resize runs them)."""
    w, h = img.size
    if (w, h) == (size, size):
        return img
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    left, top = (new_w - size) // 2, (new_h - size) // 2
    if (new_w, new_h) == (w, h):
        return img.crop((left, top, left + size, top + size))
    method = RESAMPLING[resample]
    if new_w * new_h <= 4 * size * size:  # ordinary aspect ratios: resize all, then crop (as CLIP does)
        return img.resize((new_w, new_h), method).crop((left, top, left + size, top + size))
    sx, sy = w / new_w, h / new_h
    # The source window (plus each filter's reach) around the crop: small box offsets keep Pillow's float32 box
    # coordinates exact enough, and nothing outside the window is touched.
    reach_x, reach_y = (_SUPPORT[resample] * max(k, 1.0) + 2 for k in (sx, sy))
    c0, c1 = max(0, math.floor(left * sx - reach_x) - 1), min(w, math.ceil((left + size) * sx + reach_x) + 1)
    r0, r1 = max(0, math.floor(top * sy - reach_y) - 1), min(h, math.ceil((top + size) * sy + reach_y) + 1)
    rows = img.crop((c0, r0, c1, r1))
    if new_w != w:
        rows = rows.resize((size, r1 - r0), method, box=(left * sx - c0, 0, (left + size) * sx - c0, r1 - r0))
    else:
        rows = rows.crop((left - c0, 0, left - c0 + size, r1 - r0))
    if new_h == h:
        return rows.crop((0, top - r0, size, top - r0 + size))
    return rows.resize((size, size), method, box=(0, top * sy - r0, size, (top + size) * sy - r0))


def to_pixels(img: Image.Image, cfg: PreprocessConfig) -> npt.NDArray[np.float32]:
    """Geometry as `cfg.mode` says, then scale and normalize: float32 (3, S, S)."""
    img = to_rgb(img)
    if cfg.mode == "pad":
        img = _pad_square(img, cfg.size, tuple(int(x * 255) for x in cfg.mean), cfg.resample)
    else:
        img = _resize_crop(img, cfg.size, cfg.resample)
    x = np.asarray(img, dtype=np.float32) * np.float32(1 / 255)  # (S, S, 3) in [0, 1]
    x = (x - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess(source: str | Path | bytes | Image.Image, cfg: PreprocessConfig) -> npt.NDArray[np.float32]:
    """Load and prepare one image: float32 (1, 3, S, S)."""
    return to_pixels(load_image(source), cfg)[None]
