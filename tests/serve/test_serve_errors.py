"""Bad input never crashes the server: each gets its OpenAI error object and status, then a good request works.

Malformed requests go through httpx (the `openai` client cannot send them) or a raw socket; the server under test is
the demo one (1 MiB body limit, 16 images at most, a 512-token context).
"""

from __future__ import annotations

import json
import socket
import struct
import zlib

import httpx
import pytest
from servehelpers import KEY, SHAPES, data_uri

PNG = SHAPES.read_bytes()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (a decompression bomb's calling card), with a tiny body."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def _user(*parts: dict) -> list[dict]:
    return [{"role": "user", "content": list(parts)}]


def _image(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


TEXT = {"type": "text", "text": "What is in this image?"}

# (name, request body (a dict is sent as JSON, bytes as they are), status, error code or None)
BAD: list[tuple[str, object, int, str | None]] = [
    ("not json", b'{"messages": [', 400, "invalid_json"),
    ("not utf-8", b'{"messages": "\xff\xfe"}', 400, "invalid_json"),
    ("json array", b"[1, 2]", 400, "invalid_json"),
    ("no messages", {"model": "m"}, 400, None),
    ("messages not a list", {"messages": "hi"}, 400, None),
    ("message not an object", {"messages": ["hi"]}, 400, None),
    ("content a number", {"messages": [{"role": "user", "content": 5}]}, 400, None),
    ("unknown part type", {"messages": _user({"type": "input_audio", "input_audio": {}})}, 400, None),
    ("text part without text", {"messages": _user({"type": "text"})}, 400, None),
    ("unknown role", {"messages": [{"role": "robot", "content": "hi"}]}, 400, None),
    ("tool message", {"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "x"}]}, 400, None),
    ("ends with the assistant", {"messages": [{"role": "user", "content": "hi"},
                                              {"role": "assistant", "content": "hello"}]}, 400, None),
    ("image in an assistant turn", {"messages": [{"role": "user", "content": "hi"},
                                                 {"role": "assistant", "content": [_image(data_uri(PNG))]},
                                                 {"role": "user", "content": "and?"}]}, 400, None),
    ("temperature a string", {"messages": _user(TEXT), "temperature": "hot"}, 400, None),
    ("temperature out of range", {"messages": _user(TEXT), "temperature": 7}, 400, None),
    ("max_tokens negative", {"messages": _user(TEXT), "max_tokens": -1}, 400, None),
    ("max_tokens a float", {"messages": _user(TEXT), "max_tokens": 1.5}, 400, None),
    ("stream not a bool", {"messages": _user(TEXT), "stream": "yes"}, 400, None),
    ("stop a number", {"messages": _user(TEXT), "stop": 3}, 400, None),
    ("n = 2", {"messages": _user(TEXT), "n": 2}, 400, None),
    ("remote image", {"messages": _user(TEXT, _image("http://example.com/a.png"))}, 400, "invalid_image_url"),
    ("bad base64", {"messages": _user(TEXT, _image("data:image/png;base64,@@@notbase64"))}, 400, "invalid_image_url"),
    ("not an image", {"messages": _user(TEXT, _image(data_uri(b"hello, I am not a picture")))}, 400, "invalid_image"),
    ("truncated png", {"messages": _user(TEXT, _image(data_uri(PNG[:200])))}, 400, "invalid_image"),
    ("oversized image", {"messages": _user(TEXT, _image(data_uri(_png_header_only(40000, 40000))))}, 400,
     "invalid_image"),
    ("too many images", {"messages": _user(TEXT, *[_image(data_uri(PNG))] * 17)}, 400, "too_many_images"),
    ("prompt past the context", {"messages": [{"role": "user", "content": "shapes " * 700}]}, 400,
     "context_length_exceeded"),
    ("body over the limit", {"messages": _user(TEXT, _image(data_uri(b"x" * (1024 * 1024 + 10))))}, 413,
     "request_too_large"),
]


@pytest.mark.parametrize("name,body,status,code", BAD, ids=[b[0] for b in BAD])
def test_bad_request_gets_an_error_object(demo_server, name, body, status, code):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(f"{demo_server.url}/v1/chat/completions", content=content, timeout=60,
                   headers={**demo_server.headers, "Content-Type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"], error
    assert "Traceback" not in r.text and "File \"" not in r.text
    if code is not None:
        assert error["code"] == code, error
    assert demo_server.proc.poll() is None


def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(request)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def test_raw_sockets_and_unknown_routes(demo_server):
    # a body declared too big is refused before it is sent
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
            "Content-Type: application/json\r\nContent-Length: 50000000\r\nConnection: close\r\n\r\n").encode()
    reply = _raw(demo_server.port, head)
    assert reply.startswith(b"HTTP/1.1 413") and b'"request_too_large"' in reply
    # a body cut short: the client gives up half way
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
            "Content-Length: 1000\r\n\r\n{\"messages\": [").encode()
    with socket.create_connection(("127.0.0.1", demo_server.port), timeout=30) as s:
        s.sendall(head)
    # not HTTP at all
    assert b"400" in _raw(demo_server.port, b"\x16\x03\x01 hello there\r\n\r\n").split(b"\r\n")[0]
    for method, path, status in (("GET", "/v1/nothing", 404), ("GET", "/v1/chat/completions", 405),
                                 ("GET", "/v1/models/other-model", 404)):
        r = httpx.request(method, f"{demo_server.url}{path}", headers=demo_server.headers)
        assert r.status_code == status and r.json()["error"]["message"], (path, r.text)
    assert demo_server.proc.poll() is None


def test_still_serving_after_bad_input(demo_server):
    """Runs after the tests above (file order): the server answers and its log holds no traceback."""
    r = demo_server.client().chat.completions.create(
        model="m", temperature=0, max_tokens=16,
        messages=_user({"type": "text", "text": "What is in this image?"}, _image(data_uri(PNG))))
    assert r.choices[0].message.content and r.choices[0].finish_reason in ("stop", "length")
    assert "Traceback" not in demo_server.log_text()
