"""Image preprocessing: file → pixel tensor, exactly as the bundle's manifest says.

Contract: `preprocess(image, cfg)` returns float32 `(1, 3, S, S)` (NCHW) in the normalized space the
vision encoder was trained/exported with. Training and the converters import this same module, so there is
one pixel pipeline and no drift between training, conversion and inference.

Two modes, as in LLaVA:
- "pad" (LLaVA-1.5, `image_aspect_ratio="pad"`): paste the image centred on a square canvas of side
  max(W, H) filled with the mean colour `int(mean*255)`, then resize + centre-crop (a no-op crop here).
- "crop" (LLaVA v1, CLIPImageProcessor defaults): resize the shortest edge to S, centre-crop S×S.
Both then scale by 1/255 and normalize with mean/std per channel.
"""

from __future__ import annotations

import io
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

# Refuse absurd images before decoding them fully (decompression bombs); 16k × 16k is plenty.
MAX_PIXELS = 16384 * 16384


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
        if self.size <= 0 or len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("preprocess needs a positive size and 3-channel mean/std")

    def to_dict(self) -> dict:
        return {"mode": self.mode, "size": self.size, "mean": list(self.mean), "std": list(self.std),
                "resample": self.resample}

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessConfig:
        return cls(mode=d["mode"], size=int(d["size"]), mean=tuple(float(x) for x in d["mean"]),
                   std=tuple(float(x) for x in d["std"]), resample=d.get("resample", "bicubic"))


def load_image(source: str | Path | bytes | Image.Image) -> Image.Image:
    """Open an image from a path or bytes, apply EXIF orientation, and convert any mode to RGB."""
    if isinstance(source, Image.Image):
        img = source
    else:
        name = "<bytes>" if isinstance(source, bytes) else str(source)
        try:
            fp = io.BytesIO(source) if isinstance(source, bytes) else Path(source).expanduser()
            if not isinstance(fp, io.BytesIO) and not fp.is_file():
                raise ImageError(f"image not found: {name}")
            img = Image.open(fp)
            if img.width * img.height > MAX_PIXELS:
                raise ImageError(f"image too large ({img.width}x{img.height}): {name}")
            img.load()
        except ImageError:
            raise
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            raise ImageError(f"not a readable image: {name} ({e.__class__.__name__})") from None
        except Image.DecompressionBombError:
            raise ImageError(f"image too large: {name}") from None
    img = ImageOps.exif_transpose(img)
    if img.mode != "RGB":
        # Palette images with transparency go through RGBA first so PIL does not warn.
        if img.mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")
        img = img.convert("RGB")
    return img


def expand_to_square(img: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """LLaVA-1.5's `expand2square`: centre the image on a square canvas of side max(W, H)."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(img, ((side - w) // 2, (side - h) // 2))
    return canvas


def resize_and_crop(img: Image.Image, size: int, resample: str) -> Image.Image:
    """CLIPImageProcessor geometry: shortest edge → `size` (long edge truncated), then centre crop."""
    w, h = img.size
    if (w, h) != (size, size):
        if w <= h:
            new_w, new_h = size, int(size * h / w)
        else:
            new_w, new_h = int(size * w / h), size
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), RESAMPLING[resample])
        w, h = img.size
        left, top = (w - size) // 2, (h - size) // 2
        if (w, h) != (size, size):
            img = img.crop((left, top, left + size, top + size))
    return img


def to_pixels(img: Image.Image, cfg: PreprocessConfig) -> npt.NDArray[np.float32]:
    """Geometry as `cfg.mode` says, then scale and normalize: float32 (3, S, S)."""
    if cfg.mode == "pad":
        img = expand_to_square(img, tuple(int(x * 255) for x in cfg.mean))
    img = resize_and_crop(img, cfg.size, cfg.resample)
    x = np.asarray(img, dtype=np.float32) * np.float32(1 / 255)  # (S, S, 3) in [0, 1]
    x = (x - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess(source: str | Path | bytes | Image.Image, cfg: PreprocessConfig) -> npt.NDArray[np.float32]:
    """Load and prepare one image: float32 (1, 3, S, S)."""
    return to_pixels(load_image(source), cfg)[None]
