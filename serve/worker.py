"""The one thread that owns the model: requests in arrival order, a bounded wait list, cancellation, statistics.

Contract: `Worker(model, queue_size)`; `start()`; `submit(job)` puts a `Job` on the wait list or raises
`ApiError(503)` with `Retry-After` when `queue_size` requests already wait; `stop()` cancels what waits and what runs
and joins the thread. For every job the worker sends, through `job.send` (thread-safe, onto the job's asyncio
queue): the session's events (`ImageEncoded`, `PromptProcessed`, `TextChunk`, `Finished`), or one `ApiError`; the
last item is always a `Finished`, an `ApiError` or `SKIPPED` (the client left while waiting), so the request
handler never waits forever.

One `ChatSession` serves every request: `ChatSession.answer` replaces its conversation with the request's, and the
KV cache keeps the longest common prefix with the last request, so a client that resends its history pays only for
the new turn and an image already in the cache is neither encoded nor prefilled again. A job's `cancel` event (the
client disconnected, the server stops) ends its generation at the next token. Errors inside the engine become a
500 for that request and reset the session; the worker keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from llava_local import ChatSession
from llava_local.events import Finished, ImageEncoded, PromptProcessed

from .protocol import ApiError, ChatRequest, error_for

log = logging.getLogger("serve")
SKIPPED = object()  # sent for a job whose client left before the worker got to it


@dataclass
class Job:
    request: ChatRequest
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)

    def send(self, item: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.out.put_nowait, item)
        except RuntimeError:  # the event loop is gone (server stopping): nobody reads this job any more
            self.cancel.set()


class Worker:
    def __init__(self, model: Any, queue_size: int) -> None:
        self.model = model
        self.queue_size = queue_size
        self.session = ChatSession(model)
        self._waiting: deque[Job] = deque()
        self._cond = threading.Condition()
        self._current: Job | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="llava-local-serve-worker", daemon=True)
        self._stats_lock = threading.Lock()
        self._busy_seconds = 0.0  # for Retry-After: the mean time one request holds the worker
        self._served = 0
        self.counters: dict[str, int] = dict.fromkeys(
            ("requests", "completed", "cancelled", "errors", "skipped", "rejected_busy", "images_encoded",
             "images_from_cache", "prompt_new", "prompt_reused", "generated"), 0)
        self.recent: deque[dict[str, Any]] = deque(maxlen=16)  # the last requests' statistics, newest last

    # -- the request side (event loop thread) ----------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._stopping:
                raise ApiError(503, "the server is shutting down", type="server_error", code="shutting_down")
            if len(self._waiting) >= self.queue_size and (self._current is not None or self._waiting):
                with self._stats_lock:
                    self.counters["rejected_busy"] += 1
                    mean = self._busy_seconds / self._served if self._served else 1.0
                retry = max(1, math.ceil(mean * (len(self._waiting) + 1)))
                raise ApiError(503, f"the server is busy ({len(self._waiting)} requests waiting); retry in {retry} s",
                               type="server_error", code="server_busy", headers={"Retry-After": str(retry)})
            self._waiting.append(job)
            self._cond.notify()

    def status(self) -> dict[str, Any]:
        with self._cond:
            return {"busy": self._current is not None, "waiting": len(self._waiting), "queue_size": self.queue_size}

    def stats(self) -> dict[str, Any]:
        with self._stats_lock:
            out = {"counters": dict(self.counters), "last": dict(self.recent[-1]) if self.recent else {},
                   "recent": [dict(r) for r in self.recent]}
        # The runtime's own counters: every row sent to llama_decode, every image run through the vision encoder.
        out["engine"] = {"rows_decoded": self.model.engine.rows_decoded,
                         "vision_images_encoded": self.model.vision.images_encoded,
                         "context_used": self.session.context_used, "context_max": self.session.context_max}
        out.update(self.status())
        return out

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel waiting and running requests and end the thread (the caller closes the model)."""
        with self._cond:
            self._stopping = True
            while self._waiting:
                job = self._waiting.popleft()
                job.cancel.set()
                job.send(ApiError(503, "the server is shutting down", type="server_error", code="shutting_down"))
            if self._current is not None:
                self._current.cancel.set()
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- the worker thread ------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job = self._current = self._waiting.popleft()
            t0 = time.perf_counter()
            try:
                if job.cancel.is_set():
                    self._count("skipped")
                    job.send(SKIPPED)
                else:
                    self._serve(job)
            finally:
                with self._cond:
                    self._current = None
                with self._stats_lock:
                    self._busy_seconds += time.perf_counter() - t0
                    self._served += 1

    def _count(self, name: str, n: int = 1) -> None:
        with self._stats_lock:
            self.counters[name] += n

    def _serve(self, job: Job) -> None:
        req, s = job.request, self.session
        self._count("requests")
        last: dict[str, Any] = {"images_encoded": 0, "images_from_cache": 0}
        try:
            s.system, s.generation, s.stop = req.system, req.generation, req.stop
            for event in s.answer(req.turns, req.images, cancel=job.cancel):
                if isinstance(event, ImageEncoded):
                    last["images_from_cache" if event.cached else "images_encoded"] += 1
                elif isinstance(event, PromptProcessed):
                    last.update(prompt_new=event.n_new, prompt_reused=event.n_reused, prefill_seconds=event.seconds)
                elif isinstance(event, Finished):
                    last.update(stop_reason=event.stop_reason, n_prompt=event.n_prompt_tokens,
                                n_generated=event.n_generated, time_to_first_token=event.time_to_first_token,
                                tokens_per_second=event.tokens_per_second)
                job.send(event)
        except Exception as e:  # every failure becomes this request's error; the worker goes on
            err = error_for(e)
            if err.status >= 500:
                log.error("request failed: %s", e, exc_info=not isinstance(e, ApiError))
                s.clear()  # start the next request from an empty KV cache rather than trust this one's
            self._count("errors")
            last["error"] = err.message
            job.send(err)
        with self._stats_lock:
            c = self.counters
            c["images_encoded"] += last["images_encoded"]
            c["images_from_cache"] += last["images_from_cache"]
            c["prompt_new"] += last.get("prompt_new", 0)
            c["prompt_reused"] += last.get("prompt_reused", 0)
            c["generated"] += last.get("n_generated", 0)
            if "stop_reason" in last:
                c["cancelled" if last["stop_reason"] == "cancelled" else "completed"] += 1
            self.recent.append(last)
