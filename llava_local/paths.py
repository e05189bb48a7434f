"""Where llava-local keeps things on disk.

`LLAVA_LOCAL_HOME`, when set, overrides everything (tests point it at a temporary directory):
models in `$LLAVA_LOCAL_HOME/models`, cache in `.../cache`, data (sessions) in `.../data`. Otherwise the
platform's user directories from platformdirs are used. There is no config file: settings are flags, environment
variables and the chat app's per-session settings (kept in its database).
"""

from __future__ import annotations

import os
from pathlib import Path

APP_NAME = "llava-local"
HOME_ENV = "LLAVA_LOCAL_HOME"


def _home() -> Path | None:
    value = os.environ.get(HOME_ENV)
    return Path(value).expanduser() if value else None


def data_dir() -> Path:
    """User data dir: sessions database and other persistent state."""
    home = _home()
    if home is not None:
        return home / "data"
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def models_dir() -> Path:
    """Directory where `--model NAME` resolves bundles (`<models_dir>/NAME/manifest.json`)."""
    home = _home()
    if home is not None:
        return home / "models"
    return data_dir() / "models"


def cache_dir() -> Path:
    """Cache dir: image embeddings keyed by content hash + vision-model hash."""
    home = _home()
    if home is not None:
        return home / "cache"
    import platformdirs

    return Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False))

