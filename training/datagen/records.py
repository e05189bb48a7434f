"""Input records: image + captions + boxes, read from COCO JSON, JSONL or TSV.

Contract: every loader returns `ImageRecord`s with boxes normalised to [x1, y1, x2, y2] in [0, 1] (3
decimals) and `image` as written in the output (a path relative to the image root, as LLaVA JSON stores
it). Malformed input raises `DatagenError` naming the file (and line) and what to fix; images that do
not exist on disk are dropped by `check_images`, which reports how many.

Formats:
- COCO: one or more JSON files with "images" [{id, file_name, width, height}], "annotations" with either
  "caption" (captions file) or "bbox" [x, y, w, h] px + "category_id" (instances file), and "categories".
- JSONL: {"image", "id"?, "captions": [...] | "caption", "boxes"?: [{"category", "bbox": [x1, y1, x2, y2]}],
  "width"?, "height"?}; boxes with any value > 1 are pixels and need width/height (or a readable image).
- TSV (captions only): "image<TAB>caption" per line; a header line "image<TAB>caption" is skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from llava_local.errors import LlavaLocalError


class DatagenError(LlavaLocalError):
    """A data-generation input, option or backend problem the user can fix."""


@dataclass(frozen=True)
class Box:
    """A labelled box, normalised [x1, y1, x2, y2]."""

    category: str
    bbox: tuple[float, float, float, float]


@dataclass(frozen=True)
class ImageRecord:
    """One image and what we know about it."""

    id: str
    image: str
    captions: tuple[str, ...]
    boxes: tuple[Box, ...] = field(default=())


def _norm_box(x1: float, y1: float, x2: float, y2: float, w: float, h: float) -> tuple[float, float, float, float]:
    def clamp(v: float) -> float:
        return round(min(max(v, 0.0), 1.0), 3)

    return (clamp(x1 / w), clamp(y1 / h), clamp(x2 / w), clamp(y2 / h))


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatagenError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatagenError(f"{path}: not valid JSON ({e}); pass a COCO annotations file") from None


def load_coco(paths: Sequence[Path]) -> list[ImageRecord]:
    """Merge COCO captions and/or instances files into records, ordered by image id."""
    images: dict = {}
    caps: dict = {}
    boxes: dict = {}
    cats: dict = {}
    anns: list[tuple[Path, dict]] = []
    for path in paths:
        data = _read_json(path)
        if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
            raise DatagenError(f"{path}: not COCO format (needs 'images' and 'annotations')")
        for im in data["images"]:
            images[im["id"]] = im
        for c in data.get("categories", []):
            cats[c["id"]] = c["name"]
        anns += [(path, a) for a in data["annotations"]]
    for path, a in anns:
        iid = a.get("image_id")
        if iid not in images:
            raise DatagenError(f"{path}: annotation {a.get('id')} points to unknown image_id {iid}")
        if "caption" in a:
            caps.setdefault(iid, []).append(str(a["caption"]).strip())
        elif "bbox" in a:
            if a.get("category_id") not in cats:
                raise DatagenError(f"{path}: annotation {a.get('id')} has unknown category_id {a.get('category_id')}")
            im = images[iid]
            x, y, w, h = (float(v) for v in a["bbox"])
            boxes.setdefault(iid, []).append(
                Box(cats[a["category_id"]], _norm_box(x, y, x + w, y + h, float(im["width"]), float(im["height"]))))
    out = []
    for iid in sorted(images, key=lambda i: (str(type(i)), i)):
        im = images[iid]
        out.append(ImageRecord(str(iid), im["file_name"], tuple(caps.get(iid, ())), tuple(boxes.get(iid, ()))))
    return out


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def load_jsonl(path: Path, image_root: Path | None = None) -> list[ImageRecord]:
    """Records from a JSONL file (see module docstring)."""
    out = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DatagenError(f"{path}: no such file") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            image = str(d["image"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DatagenError(f"{path}:{n}: expected a JSON object with an 'image' key") from None
        captions = d.get("captions", [d["caption"]] if "caption" in d else [])
        bxs = []
        for b in d.get("boxes", []):
            x1, y1, x2, y2 = (float(v) for v in b["bbox"])
            if max(x1, y1, x2, y2) > 1.0:  # pixels
                w, h = d.get("width"), d.get("height")
                if not (w and h):
                    root = image_root or path.parent
                    try:
                        w, h = _image_size(root / image)
                    except OSError:
                        raise DatagenError(
                            f"{path}:{n}: pixel boxes need 'width'/'height' or a readable image") from None
                bxs.append(Box(str(b["category"]), _norm_box(x1, y1, x2, y2, float(w), float(h))))
            else:
                bxs.append(Box(str(b["category"]), (round(x1, 3), round(y1, 3), round(x2, 3), round(y2, 3))))
        rid = str(d.get("id", Path(image).stem))
        out.append(ImageRecord(rid, image, tuple(str(c).strip() for c in captions), tuple(bxs)))
    return out


def load_tsv(path: Path) -> list[ImageRecord]:
    """Records from "image<TAB>caption" lines; one record per line."""
    out = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DatagenError(f"{path}: no such file") from None
    for n, line in enumerate(lines, 1):
        if not line.strip() or (n == 1 and line.lower().startswith("image\tcaption")):
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise DatagenError(f"{path}:{n}: expected 'image<TAB>caption'")
        image = parts[0].strip()
        out.append(ImageRecord(f"{Path(image).stem}-{n}", image, (parts[1].strip(),)))
    return out


def load_records(paths: Sequence[Path], image_root: Path | None = None) -> list[ImageRecord]:
    """Dispatch on the file suffix: .json → COCO (all files merged), .jsonl → JSONL, .tsv → TSV."""
    if not paths:
        raise DatagenError("no input: pass --input FILE (COCO .json, .jsonl or .tsv)")
    suffixes = {p.suffix.lower() for p in paths}
    if suffixes == {".json"}:
        return load_coco(paths)
    if len(paths) == 1 and suffixes == {".jsonl"}:
        return load_jsonl(paths[0], image_root)
    if len(paths) == 1 and suffixes == {".tsv"}:
        return load_tsv(paths[0])
    raise DatagenError(f"unsupported input {', '.join(map(str, paths))}: use COCO .json files, or one .jsonl or .tsv")


def check_images(records: Iterable[ImageRecord], image_root: Path) -> tuple[list[ImageRecord], list[str]]:
    """Split records into those whose image exists under `image_root` and the missing image paths."""
    kept, missing = [], []
    for r in records:
        if (image_root / r.image).is_file():
            kept.append(r)
        else:
            missing.append(r.image)
    return kept, missing
