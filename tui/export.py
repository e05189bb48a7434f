"""`/export`: a session as Markdown with its images, in a folder or a zip.

Contract: `export_session(title, messages, images_dir, dest)` writes `<dest>/session.md` and
`<dest>/images/<sha256><ext>` (or the same tree inside `dest` when it ends in `.zip`) and returns the path
written. Images are referenced relatively, so the folder or the unzipped archive renders anywhere.
"""

from __future__ import annotations

import shutil
import zipfile
from collections.abc import Sequence
from pathlib import Path

from llava_local.errors import UsageError

from .store import Message


def to_markdown(title: str, messages: Sequence[Message]) -> str:
    """The conversation as Markdown; images as `![name](images/<sha><ext>)`."""
    lines = [f"# {title}", ""]
    for m in messages:
        if m.role == "user":
            lines.append("## You")
            lines.append("")
            lines += [f"![{r.name}](images/{r.sha256}{r.ext})" for r in m.images]
            if m.images:
                lines.append("")
        else:
            lines.append("## Assistant")
            lines.append("")
        lines.append(m.text)
        if m.stop_reason == "cancelled":
            lines += ["", "*(stopped)*"]
        lines.append("")
    return "\n".join(lines)


def export_session(title: str, messages: Sequence[Message], images_dir: Path, dest: str | Path) -> Path:
    """Write the export; returns the folder or zip written."""
    dest = Path(dest).expanduser()
    if not messages:
        raise UsageError("nothing to export yet: ask something first")
    text = to_markdown(title, messages)
    refs = {r.sha256 + r.ext: r for m in messages for r in m.images}
    try:
        if dest.suffix.lower() == ".zip":
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as z:
                z.writestr("session.md", text)
                for fname in refs:
                    z.write(images_dir / fname, f"images/{fname}")
        else:
            (dest / "images").mkdir(parents=True, exist_ok=True)
            (dest / "session.md").write_text(text, encoding="utf-8")
            for fname in refs:
                shutil.copyfile(images_dir / fname, dest / "images" / fname)
    except OSError as e:
        raise UsageError(f"cannot write the export to {dest}: {e.strerror or e}") from None
    return dest
