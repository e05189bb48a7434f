"""The HTTP side: a Starlette app speaking OpenAI's chat-completions protocol in front of the `Worker`.

Contract: `create_app(worker, settings) -> Starlette` with
- `POST /v1/chat/completions`: JSON answer, or server-sent events (`stream: true`, sse-starlette) ending in
  `data: [DONE]`; `stream_options.include_usage` adds the usage chunk.
- `GET /v1/models`, `GET /v1/models/{id}`: the one loaded model.
- `GET /v1/stats`: the worker's counters (prefill positions new/reused, images encoded, ...) and the runtime's
  (`rows_decoded`, `vision_images_encoded`), for tests, benchmarks and the curious.
- `GET /health`: liveness and load (no key needed, no conversation data).
Every `/v1/` route needs `Authorization: Bearer KEY` when a key is set (401 otherwise, compared in constant time).
Every error, ours or Starlette's (404, 405), is an OpenAI error object; a body over `max_body` bytes is a 413
before it is read whole. While a request waits or streams, a client that disconnects sets its job's `cancel`,
which ends the generation at the next token and frees the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from llava_local.events import Finished, PromptProcessed, TextChunk

from .images import ImageSources
from .protocol import FINISH, ApiError, Limits, chunk, completion, new_id, parse_request, usage
from .worker import SKIPPED, Job, Worker


@dataclass(frozen=True)
class Settings:
    model_name: str
    api_key: str | None
    limits: Limits
    images: ImageSources
    max_body: int  # bytes


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    too_big = ApiError(413, f"the request body is over this server's limit of {limit} bytes",
                       code="request_too_large")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, n = [], 0
    try:
        async for part in request.stream():
            n += len(part)
            if n > limit:
                raise too_big
            chunks.append(part)
    except ClientDisconnect:  # the client left half way through its body; nobody reads this answer
        raise ApiError(400, "the client closed the connection before the body ended", code="client_closed") from None
    return b"".join(chunks)


async def _watch_disconnect(request: Request, cancel: Any) -> None:
    """Set `cancel` when the client goes away (the body is read, so the next message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            cancel.set()
            return


def create_app(worker: Worker, settings: Settings) -> Starlette:
    name = settings.model_name
    created = int(time.time())
    model_object = {"id": name, "object": "model", "created": created, "owned_by": "llava-local"}

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": name, **worker.status()})

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [model_object]})

    async def model(request: Request) -> Response:
        if request.path_params["model"] != name:
            raise ApiError(404, f"no model {request.path_params['model']!r} here; this server has {name!r}",
                           param="model", code="model_not_found")
        return JSONResponse(model_object)

    async def stats(request: Request) -> Response:
        return JSONResponse(worker.stats())

    async def chat(request: Request) -> Response:
        raw = await _read_body(request, settings.max_body)
        # JSON of up to --max-body-mb, base64 images and file reads: off the event loop, which serves every stream
        req = await asyncio.to_thread(parse_request, raw, settings.limits, settings.images)
        job = Job(req, asyncio.get_running_loop())
        worker.submit(job)
        reused = 0  # prompt positions the KV cache already held (usage.prompt_tokens_details.cached_tokens)
        watcher = asyncio.create_task(_watch_disconnect(request, job.cancel))
        try:
            # Wait for the prefill (or an error: it gets its own HTTP status); a JSON answer waits for the end.
            while True:
                item = await job.out.get()
                if isinstance(item, PromptProcessed):
                    reused = item.n_reused
                    if req.stream:
                        break
                elif isinstance(item, (Finished, ApiError)) or item is SKIPPED:
                    break
        finally:
            watcher.cancel()
        if isinstance(item, ApiError):
            return error_response(item)
        if item is SKIPPED:
            return error_response(ApiError(499, "the client closed the request", code="client_closed"))
        cid = new_id()
        if not req.stream:
            return JSONResponse(completion(cid, name, item.text, FINISH[item.stop_reason], _usage(item, reused)))
        # the background task runs however the response ends, even if it is cancelled before the generator's first
        # step (whose `finally` then never runs): a client that left never keeps the worker generating
        return EventSourceResponse(_stream(job, cid, reused, req.include_usage), sep="\n", ping=15,
                                   background=BackgroundTask(job.cancel.set))

    def _usage(fin: Finished, reused: int) -> dict[str, Any]:
        return usage(fin.n_prompt_tokens, fin.n_generated, reused)

    async def _stream(job: Job, cid: str, reused: int, include_usage: bool) -> AsyncIterator[dict[str, str]]:
        created_at = int(time.time())

        def data(delta: dict[str, Any] | None, finish: str | None = None, use: dict[str, Any] | None = None
                 ) -> dict[str, str]:
            return {"data": json.dumps(chunk(cid, created_at, name, delta, finish, use), ensure_ascii=False)}

        try:
            yield data({"role": "assistant", "content": ""})
            while True:
                item = await job.out.get()
                if isinstance(item, TextChunk):
                    yield data({"content": item.text})
                elif isinstance(item, Finished):
                    yield data({}, FINISH[item.stop_reason])
                    if include_usage:
                        yield data(None, use=_usage(item, reused))
                    break
                elif isinstance(item, ApiError):  # failed after the stream began: the error goes in the stream
                    yield {"data": json.dumps(item.body())}
                    break
            yield {"data": "[DONE]"}
        finally:
            job.cancel.set()  # the client left (sse-starlette cancels this generator), or harmless: the job is done

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(ApiError(exc.status_code, str(exc.detail), code=kind))

    async def server_error(request: Request, exc: Exception) -> Response:
        return error_response(ApiError(500, "internal error; see the server log", type="server_error",
                                       code="internal_error"))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        worker.start()
        try:
            yield
        finally:
            await asyncio.to_thread(worker.stop)

    app = Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/models/{model:path}", model, methods=["GET"]),
            Route("/v1/stats", stats, methods=["GET"]),
            Route("/v1/chat/completions", chat, methods=["POST"]),
        ],
        exception_handlers={ApiError: api_error, HTTPException: http_error, Exception: server_error},
        lifespan=lifespan,
    )
    if settings.api_key:
        return _with_key(app, settings.api_key)
    return app


def _with_key(app: Starlette, key: str) -> Any:
    """ASGI wrapper: `/v1/` paths need `Authorization: Bearer <key>`."""
    expected = f"Bearer {key}".encode()
    denied = ApiError(401, "invalid or missing API key (send Authorization: Bearer KEY)",
                      type="authentication_error", code="invalid_api_key")

    async def guarded(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            got = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(got, expected):
                await error_response(denied)(scope, receive, send)
                return
        await app(scope, receive, send)

    guarded.app = app  # type: ignore[attr-defined]
    return guarded
