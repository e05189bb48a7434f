"""Where a request's images come from: `data:` URIs, and local files only inside `--allow-files DIR`.

Contract: `ImageSources(allow_files, max_bytes)(url, param) -> bytes` or `ApiError`. The bytes are not decoded
here (the runtime does that, with `llava-local chat`'s limits); this module only finds them:
- `data:[<type>][;base64],<payload>`: base64 (whitespace tolerated) or percent-encoded.
- `http(s)://`: refused; the server is offline by design and never fetches what a request names.
- `file://PATH` or a plain path: refused unless the server was started with `--allow-files DIR`; then the path
  (relative paths are relative to DIR) is resolved with every symlink followed and must lie inside DIR's own
  resolved path, so `../`, absolute paths elsewhere and links pointing out of DIR are refused (403).
- more than `max_bytes` of image is refused (413), like a request body over the limit.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path
from urllib.parse import unquote, unquote_to_bytes, urlparse

from .protocol import ApiError


class ImageSources:
    def __init__(self, allow_files: Path | None, max_bytes: int) -> None:
        self.root = allow_files.expanduser().resolve(strict=True) if allow_files is not None else None
        self.max_bytes = max_bytes

    def __call__(self, url: str, param: str) -> bytes:
        head = url[:16].lower()
        if head.startswith("data:"):
            data = self._data_uri(url, param)
        elif head.startswith(("http://", "https://")):
            raise ApiError(400, "remote image URLs are not fetched: this server works offline; send the image as a "
                           "data: URI (base64)", param=param, code="invalid_image_url")
        else:
            data = self._file(url, param)
        if not data:
            raise ApiError(400, "the image is empty", param=param, code="invalid_image")
        return data

    def _too_big(self, n: int, param: str) -> ApiError:
        return ApiError(413, f"an image of {n} bytes is over this server's limit of {self.max_bytes}", param=param,
                        code="image_too_large")

    def _data_uri(self, url: str, param: str) -> bytes:
        header, comma, payload = url[5:].partition(",")
        if not comma:
            raise ApiError(400, "a data: URI needs a comma before its data", param=param, code="invalid_image_url")
        if header.lower().endswith(";base64"):
            # 4 base64 characters are 3 bytes: refuse an oversized image before decoding it.
            if len(payload) * 3 // 4 > self.max_bytes + 3:
                raise self._too_big(len(payload) * 3 // 4, param)
            try:
                data = base64.b64decode("".join(payload.split()), validate=True)
            except (binascii.Error, ValueError):
                raise ApiError(400, "the data: URI is not valid base64", param=param, code="invalid_image_url") \
                    from None
        else:
            data = unquote_to_bytes(payload)
        if len(data) > self.max_bytes:
            raise self._too_big(len(data), param)
        return data

    def _file(self, url: str, param: str) -> bytes:
        if self.root is None:
            raise ApiError(400, "image_url must be a data: URI; local files are off (start the server with "
                           "--allow-files DIR to allow files inside DIR)", param=param, code="invalid_image_url")
        if url.lower().startswith("file:"):
            parsed = urlparse(url)
            if parsed.netloc not in ("", "localhost"):
                raise ApiError(400, "a file: URL must name a local file", param=param, code="invalid_image_url")
            name = unquote(parsed.path)
        else:
            name = url
        if "\0" in name:
            raise ApiError(400, "the image path holds a NUL character", param=param, code="invalid_image_url")
        try:
            path = (self.root / Path(name).expanduser()).resolve()  # an absolute path replaces root; symlinks followed
            if not path.is_relative_to(self.root):
                raise ApiError(403, "the image path is outside the directory this server may read (--allow-files)",
                               type="permission_error", param=param, code="path_not_allowed")
            if not path.is_file():
                raise ApiError(400, f"image not found: {name[:200]}", param=param, code="invalid_image")
        except (OSError, RuntimeError) as e:  # a name too long, a symlink loop
            raise ApiError(400, f"cannot read the image path: {getattr(e, 'strerror', None) or e}", param=param,
                           code="invalid_image") from None
        try:
            with open(path, "rb") as f:  # read at most one byte past the limit
                size = os.fstat(f.fileno()).st_size
                if size > self.max_bytes:
                    raise self._too_big(size, param)
                return f.read(self.max_bytes + 1)
        except OSError as e:
            raise ApiError(400, f"cannot read image {name}: {e.strerror}", param=param, code="invalid_image") \
                from None
