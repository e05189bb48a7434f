"""Turning what the user typed or pasted into image paths.

Contract: `split_paths(text)` splits a `/image` argument or a pasted/dropped string into paths the way a
shell would (quotes, backslash-escaped spaces, `file://` URLs, `~`); `pasted_images(text)` returns the paths
only when *every* part of the text is an existing image file, so pasting ordinary prose never attaches
anything. `check_image(path)` raises `llava_local.errors.ImageError` with a one-line message for a missing
or unreadable file (it decodes the image with the runtime's own loader, so what passes here passes there).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from urllib.parse import unquote, urlparse

from llava_local.errors import ImageError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"})


def _one(token: str) -> Path:
    if token.startswith("file://"):
        token = unquote(urlparse(token).path)
    return Path(token).expanduser()


def split_paths(text: str) -> list[Path]:
    """Paths in `text`: shell-style quoting, `\\ ` escapes, `file://` URLs and `~` are understood."""
    text = text.strip()
    if not text:
        return []
    try:
        tokens = shlex.split(text)
    except ValueError:
        # An unbalanced quote: treat the whole text as one path (minus the stray quote).
        tokens = [text.strip("'\"")]
    # A single unquoted path with spaces ("~/My Pictures/cat.png") is a common paste: prefer it if it exists.
    whole = _one(text.strip("'\""))
    if len(tokens) > 1 and whole.exists():
        return [whole]
    return [_one(t) for t in tokens]


def pasted_images(text: str) -> list[Path]:
    """The image files a paste or drag-and-drop contains, or [] if it is not purely image paths."""
    if "\n" in text.strip() and not all(line.strip() for line in text.strip().splitlines()):
        return []
    paths = split_paths(text.replace("\n", " "))
    if paths and all(p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() for p in paths):
        return paths
    return []


def check_image(path: Path) -> None:
    """Raise ImageError if `path` is not a readable image."""
    from llava_local.preprocess import load_image

    if not path.exists():
        raise ImageError(f"image not found: {path} (check the path; quote it if it has spaces)")
    if path.is_dir():
        raise ImageError(f"{path} is a folder, not an image: give a file, or press ctrl+o to pick one")
    load_image(path)


def complete_path(prefix: str) -> list[str]:
    """Completions for a partly typed path (files and folders, folders with a trailing '/')."""
    raw = prefix.strip("'\"")
    p = Path(raw).expanduser()
    folder, stem = (p, "") if raw.endswith("/") else (p.parent, p.name)
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    shown_folder = raw[: len(raw) - len(stem)]
    out = []
    for e in entries:
        if e.name.startswith(stem) and not (e.name.startswith(".") and not stem.startswith(".")):
            if e.is_dir():
                out.append(shown_folder + e.name + "/")
            elif e.suffix.lower() in IMAGE_SUFFIXES:
                out.append(shown_folder + e.name)
    return out
