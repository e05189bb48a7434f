"""Model resolution: what `--model PATH|NAME` (or no `--model`) means.

Contract: `resolve_model(value) -> Path` of a bundle directory, or `ModelNotFound` with a fix-it message.
- A value that looks like a path (has a separator, starts with `.` or `~`, or exists) is that directory.
- Otherwise it is a NAME: `llava_local.paths.models_dir()/NAME`.
- No value: env `LLAVA_LOCAL_MODEL` (a path or a name), else the bundle named `default` in the models dir, else
  the demo bundle shipped at `<repo>/models/llava-local-tiny` or `<package>/models/llava-local-tiny`.
`list_models()` names the bundles installed in the models dir.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ModelNotFound
from .manifest import MANIFEST_NAME
from .paths import models_dir

MODEL_ENV = "LLAVA_LOCAL_MODEL"
DEFAULT_NAME = "default"
DEMO_NAME = "llava-local-tiny"


def demo_candidates() -> list[Path]:
    """Where the shipped demo bundle may live: a source checkout, then inside the installed package."""
    here = Path(__file__).resolve().parent
    return [here.parent / "models" / DEMO_NAME, here / "models" / DEMO_NAME]


def list_models() -> list[str]:
    """Names of the bundles in the models dir (directories holding a manifest)."""
    d = models_dir()
    if not d.is_dir():
        return []
    return sorted(p.name for p in d.iterdir() if (p / MANIFEST_NAME).is_file())


def _looks_like_path(value: str) -> bool:
    return os.sep in value or "/" in value or value.startswith((".", "~")) or Path(value).expanduser().exists()


def resolve_model(value: str | os.PathLike[str] | None = None) -> Path:
    """The bundle directory for `--model` (see the module docstring)."""
    if value is None:
        env = os.environ.get(MODEL_ENV)
        if env:
            return resolve_model(env)
        default = models_dir() / DEFAULT_NAME
        if (default / MANIFEST_NAME).is_file():
            return default
        for demo in demo_candidates():
            if (demo / MANIFEST_NAME).is_file():
                return demo
        raise ModelNotFound(
            f"no model given and no default model found; pass --model PATH, set {MODEL_ENV}, or install a bundle "
            f"as {default} (`llava-local convert CHECKPOINT -o {default}`)"
        )
    text = str(value)
    if isinstance(value, os.PathLike) or _looks_like_path(text):
        path = Path(text).expanduser()
        if not path.exists():
            raise ModelNotFound(f"model not found: {path} does not exist")
        if not path.is_dir():
            raise ModelNotFound(f"--model {path} is a file; pass the bundle directory that holds {MANIFEST_NAME}")
        return path
    path = models_dir() / text
    if not path.is_dir():
        names = list_models()
        known = f"installed: {', '.join(names)}" if names else f"no models installed in {models_dir()}"
        raise ModelNotFound(f"unknown model {text!r} ({known}); pass a bundle directory or a name from the list")
    return path
