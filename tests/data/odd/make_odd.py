"""Writes the odd-image corpus next to this file (deterministic; run it to regenerate: `python make_odd.py`).

Each file is a way an image can be strange or hostile; tests/runtime/test_odd_images.py replays all of them through
`llava-local chat` and expects either an answer or one line naming the file. All files together stay under 40 KB.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(w: int, h: int) -> bytes:
    """A PNG header claiming w × h RGB pixels, followed by almost no image data."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        _chunk(b"IEND", b"")


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def scene(w: int = 48, h: int = 32, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = np.full((h, w, 3), 240, np.uint8)
    arr[h // 4: 3 * h // 4, w // 4: w // 2] = rng.integers(0, 256, 3, dtype=np.uint8)
    return Image.fromarray(arr)


def files() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    ramp = (np.arange(48 * 32, dtype=np.uint32).reshape(32, 48) * 42).astype(np.uint16)
    frames = [scene(seed=i) for i in range(3)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    exif = Image.Exif()
    exif[0x0112] = 9  # an orientation that does not exist
    good_png = encode(scene(), "PNG")
    good_jpg = encode(scene(), "JPEG")
    pal = scene().quantize(colors=4)
    return {
        "empty.png": b"",
        "text-named.png": b"this is a text file, not a picture\n",
        "svg-named.png": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
        "truncated.png": good_png[: len(good_png) // 2],
        "truncated.jpg": good_jpg[: len(good_jpg) // 2],
        "tall-1x40000.png": encode(Image.new("L", (1, 40000), 200), "PNG", optimize=True),
        "claims-100000x100000.png": png_claiming(100_000, 100_000),
        "claims-12000x12000.png": png_claiming(12_000, 12_000),
        "grey16.png": encode(Image.fromarray(ramp), "PNG"),
        "cmyk.jpg": encode(scene().convert("CMYK"), "JPEG"),
        "animated.gif": gif.getvalue(),
        "palette-transparent.png": encode(pal, "PNG", transparency=0),
        "bad-exif-orientation.jpg": encode(scene(), "JPEG", exif=exif.tobytes()),
        "grey-alpha.png": encode(scene().convert("LA"), "PNG"),
        "one-bit.png": encode(scene().convert("1"), "PNG"),
        "float32.tif": encode(Image.fromarray(rng.normal(100, 50, (32, 48)).astype(np.float32)), "TIFF"),
        "wide-4000x1.png": encode(Image.new("RGB", (4000, 1), (10, 200, 30)), "PNG", optimize=True),
        "tiny-1x1.png": encode(Image.new("RGB", (1, 1), (255, 0, 0)), "PNG"),
        "lossless.webp": encode(scene(), "WEBP", lossless=True),
    }


if __name__ == "__main__":
    for name, data in files().items():
        (HERE / name).write_bytes(data)
    print(f"wrote {len(files())} files to {HERE}")
