"""The OpenAI chat-completions protocol: request JSON in, a validated `ChatRequest` out; response objects back.

Contract: `parse_request(body, limits, resolve_image) -> ChatRequest` or `ApiError` (an OpenAI-style error with its
HTTP status: 400 for malformed JSON, wrong types and unsupported features, whatever `resolve_image` raises for an
image). Nothing here touches the model: images come back as bytes, decoded later by the runtime (same pixel limits
as `llava-local chat`). `error_for(exc)` maps the runtime's errors onto statuses; `completion`, `chunk` and `usage`
build the response objects.

What a request becomes:
- `system` and `developer` messages (text) join into the system prompt; none means the bundle's own.
- `user` content is a string or a list of parts (`text`, `image_url` with `{"url": ...}` or a bare string);
  images go before the text of their turn, as LLaVA places them. `assistant` content is text.
- Consecutive messages of one role merge (the template alternates user/assistant); the first and the last
  message after the system ones must be the user's.
- Sampling: temperature, top_p, max_tokens / max_completion_tokens, stop (a string or a list), seed,
  frequency_penalty / presence_penalty, plus llama.cpp's top_k and repeat_penalty. null means "not given";
  unknown fields are ignored, as OpenAI clients send many. n must be 1; logprobs and tool calls are refused.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llava_local import GenerationConfig, Turn
from llava_local.errors import (
    ContextOverflow,
    ImageError,
    LlavaLocalError,
    TemplateError,
    UsageError,
)

MAX_STOP = 16  # stop strings per request (OpenAI allows 4; llama.cpp's server more)


class ApiError(Exception):
    """An error a client sees as `{"error": {"message", "type", "param", "code"}}` with `status`."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (the CLI's flags)."""

    max_images: int = 16
    default_max_tokens: int = 512


@dataclass(frozen=True)
class ChatRequest:
    """A validated chat-completions request."""

    turns: tuple[Turn, ...]
    images: tuple[bytes, ...]  # every image of the conversation, in order
    system: str | None
    generation: GenerationConfig
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool


ImageResolver = Callable[[str, str], bytes]  # (url, param) -> image bytes, or ApiError


def _bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _number(body: dict[str, Any], name: str, lo: float, hi: float) -> float | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _bad(f"{name} must be a number", name)
    if not lo <= v <= hi:
        raise _bad(f"{name} must be between {lo:g} and {hi:g}, got {v:g}", name)
    return float(v)


def _integer(body: dict[str, Any], name: str, lo: int, hi: int | None = None) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(f"{name} must be an integer", name)
    if v < lo or (hi is not None and v > hi):
        raise _bad(f"{name} must be {'>= ' + str(lo) if hi is None else f'between {lo} and {hi}'}, got {v}", name)
    return v


def _generation(body: dict[str, Any], limits: Limits) -> GenerationConfig:
    fields: dict[str, Any] = {}
    temperature = _number(body, "temperature", 0.0, 2.0)
    top_p = _number(body, "top_p", 0.0, 1.0)
    if temperature is not None:
        fields["temperature"] = temperature
    if top_p == 0.0:  # OpenAI accepts 0: only the most likely token survives
        fields["temperature"] = 0.0
    elif top_p is not None:
        fields["top_p"] = top_p
    for name in ("frequency_penalty", "presence_penalty"):
        v = _number(body, name, -2.0, 2.0)
        if v is not None:
            fields[name] = v
    repeat = _number(body, "repeat_penalty", 0.01, 10.0)
    if repeat is not None:
        fields["repeat_penalty"] = repeat
    top_k = _integer(body, "top_k", 0, 2**31 - 1)  # llama.cpp takes an int32
    if top_k is not None:
        fields["top_k"] = top_k
    max_tokens = _integer(body, "max_completion_tokens", 1, 2**31 - 1)
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens", 1, 2**31 - 1)
    fields["max_tokens"] = max_tokens or limits.default_max_tokens
    # OpenAI's penalties look at the whole answer: the penalties window covers max_tokens.
    fields["repeat_last_n"] = fields["max_tokens"]
    seed = _integer(body, "seed", -(2**63), 2**64 - 1)
    # No seed: a fresh one per request, so a client's "regenerate" gets a new sample as with OpenAI.
    fields["seed"] = (seed if seed is not None else secrets.randbits(32)) & 0xFFFFFFFF
    try:
        return GenerationConfig(**fields)
    except UsageError as e:
        raise _bad(str(e)) from None


def _stops(body: dict[str, Any]) -> tuple[str, ...]:
    v = body.get("stop")
    if v is None:
        return ()
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise _bad("stop must be a string or a list of strings", "stop")
    if len(items) > MAX_STOP:
        raise _bad(f"stop takes at most {MAX_STOP} strings, got {len(items)}", "stop")
    return tuple(s for s in items if s)


def _parts(content: Any, param: str, allow_images: bool) -> tuple[list[str], list[tuple[str, str]]]:
    """(texts, [(image url, param)]) of a message's content."""
    if content is None:
        return [], []
    if isinstance(content, str):
        return [content], []
    if not isinstance(content, list):
        raise _bad("content must be a string or a list of content parts", param)
    texts: list[str] = []
    urls: list[tuple[str, str]] = []
    for j, part in enumerate(content):
        p = f"{param}[{j}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise _bad("a content part must be an object with a string 'type'", p)
        kind = part["type"]
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise _bad("a text part needs a string 'text'", f"{p}.text")
            texts.append(part["text"])
        elif kind == "image_url":
            if not allow_images:
                raise _bad("only user messages can hold images", p)
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str) or not url:
                raise _bad("an image_url part needs image_url.url (a data: URI)", f"{p}.image_url")
            urls.append((url, f"{p}.image_url"))
        else:
            raise _bad(f"content parts of type {kind!r} are not supported (text and image_url are)", f"{p}.type")
    return texts, urls


def parse_request(raw: bytes, limits: Limits, resolve_image: ImageResolver) -> ChatRequest:
    """A `ChatRequest` from the request body, or ApiError (see the module docstring)."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise _bad("the request body is not valid JSON", code="invalid_json") from None
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object", code="invalid_json")
    if body.get("n") not in (None, 1):
        raise _bad("n must be 1: this server returns one choice", "n")
    if body.get("logprobs"):
        raise _bad("logprobs are not supported", "logprobs")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("stream must be true or false", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _bad("stream_options must be an object", "stream_options")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages must be a non-empty list", "messages")

    system: list[str] = []
    merged: list[tuple[str, list[str], list[tuple[str, str]]]] = []  # (role, texts, image urls)
    for i, m in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _bad("a message must be an object", param)
        role = m.get("role")
        if role in ("tool", "function") or m.get("tool_calls") or m.get("function_call"):
            raise _bad("tool and function calls are not supported", f"{param}.role")
        if role not in ("system", "developer", "user", "assistant"):
            raise _bad(f"unknown role {role!r} (use system, user or assistant)", f"{param}.role")
        texts, urls = _parts(m.get("content"), f"{param}.content", allow_images=role == "user")
        if role in ("system", "developer"):
            system.append("\n".join(texts))
        elif merged and merged[-1][0] == role:
            merged[-1][1].extend(texts)
            merged[-1][2].extend(urls)
        else:
            merged.append((role, texts, urls))
    if not merged or merged[0][0] != "user":
        raise _bad("the first message after the system prompt must be the user's", "messages")
    if merged[-1][0] != "user":
        raise _bad("the last message must be the user's: this server answers a question", "messages")
    n_images = sum(len(urls) for _, _, urls in merged)
    if n_images > limits.max_images:
        raise _bad(f"too many images: {n_images} in the conversation, this server takes at most {limits.max_images}",
                   "messages", "too_many_images")
    images = [resolve_image(url, p) for _, _, urls in merged for url, p in urls]
    turns = tuple(Turn(role, "\n".join(texts), len(urls)) for role, texts, urls in merged)
    return ChatRequest(turns=turns, images=tuple(images), system="\n".join(system) if system else None,
                       generation=_generation(body, limits), stop=_stops(body), stream=stream,
                       include_usage=bool(options.get("include_usage")))


def error_for(exc: BaseException) -> ApiError:
    """The error a client sees for an exception raised while answering."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ContextOverflow):
        return ApiError(400, str(exc), param="messages", code="context_length_exceeded")
    if isinstance(exc, ImageError):
        return ApiError(400, str(exc).replace("<bytes>", "an image of the request"), param="messages",
                        code="invalid_image")
    if isinstance(exc, (UsageError, TemplateError)):
        return ApiError(400, str(exc), param="messages")
    if isinstance(exc, LlavaLocalError):
        return ApiError(500, f"the model failed: {exc}", type="server_error", code="engine_error")
    return ApiError(500, f"internal error ({exc.__class__.__name__}); see the server log", type="server_error",
                    code="internal_error")


FINISH = {"eos": "stop", "stop": "stop", "length": "length", "cancelled": "stop"}


def new_id() -> str:
    return f"chatcmpl-{secrets.token_hex(12)}"


def usage(n_prompt: int, n_generated: int, n_reused: int) -> dict[str, Any]:
    """OpenAI's usage object; `cached_tokens` are the prompt positions reused from the KV cache."""
    return {"prompt_tokens": n_prompt, "completion_tokens": n_generated, "total_tokens": n_prompt + n_generated,
            "prompt_tokens_details": {"cached_tokens": n_reused}}


def completion(cid: str, model: str, text: str, finish: str, use: dict[str, Any]) -> dict[str, Any]:
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": finish}],
            "usage": use}


def chunk(cid: str, created: int, model: str, delta: dict[str, Any] | None, finish: str | None = None,
          use: dict[str, Any] | None = None) -> dict[str, Any]:
    """One streamed `chat.completion.chunk`; `delta=None` is the usage-only chunk (no choices)."""
    out: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                           "choices": [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                                                 "finish_reason": finish}]}
    if use is not None:
        out["usage"] = use
    return out
