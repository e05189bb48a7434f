"""An Ollama model store as Ollama lays it out (`blobs/sha256-<hex>`, `manifests/<host>/<ns>/<name>/<tag>`), for the
tests of `converters.sources` and `llava-local import`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

MEDIA = "application/vnd.ollama.image."  # + "model", "projector", "template", "system", "params"


def blob(store: Path, data: bytes) -> dict:
    """Store `data` as a blob; its manifest entry (digest and size)."""
    digest = hashlib.sha256(data).hexdigest()
    (store / "blobs").mkdir(parents=True, exist_ok=True)
    (store / "blobs" / f"sha256-{digest}").write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def write_model(store: Path, name: str, tag: str, layers: dict[str, bytes], host: str = "registry.ollama.ai",
                ns: str = "library", config: bytes = b'{"model_format":"gguf","model_family":"llama"}') -> Path:
    """A model `name:tag` whose layers are `layers` (kind → bytes); returns its manifest's path."""
    manifest = {
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", **blob(store, config)},
        "layers": [{"mediaType": MEDIA + kind, **blob(store, data)} for kind, data in layers.items()],
    }
    path = store / "manifests" / host / ns / name / tag
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest))
    return path
