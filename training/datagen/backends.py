"""Backends that turn a prompt into response text: local GGUF, OpenAI-compatible HTTP, rule-based teacher.

Contract: a backend has `name` and `complete(request) -> str`, is safe to call from several threads, and
signals failures in two kinds: `retry.GaveUp` (a transient failure outlived its retries: the job stays
unfinished and a later run retries it) and `DatagenError` (the user must fix something — a bad key, an
unknown model, a prompt larger than the context; the run stops, the journal keeps what is done).

- `LlamaCppBackend`: llama-cpp-python on a local GGUF, fully offline. Calls are serialised with a lock
  (one llama.cpp context). With `grammar=True` each response type is constrained by a GBNF grammar
  (`GRAMMARS`) so the output always has the shape `parse.py` reads; lines are bounded by `line_chars`.
- `OpenAIBackend`: POST {base_url}/chat/completions with stdlib urllib; 429/408/5xx, timeouts, dropped
  connections and unreadable bodies are retried with backoff (honouring Retry-After); calls pass a shared
  rate limiter.
- `TeacherBackend`: answers from the synthetic world's symbolic scene (rebuilt from the record's boxes).
"""

from __future__ import annotations

import functools
import http.client
import json
import random
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from . import teacher
from .prompts import RTYPES
from .records import DatagenError, ImageRecord
from .retry import RateLimiter, RetryPolicy, Transient, call_with_retries, parse_retry_after
from .world import Scene, scene_from_boxes


@dataclass(frozen=True)
class Request:
    """One generation job: response type, its record, the chat messages, and a per-job seed."""

    rtype: str
    record: ImageRecord
    messages: tuple[dict, ...]
    seed: int


class Backend(Protocol):
    """What the pipeline needs from a backend (see the module docstring for the failure contract)."""

    name: str

    def complete(self, request: Request) -> str: ...

    def close(self) -> None: ...


def _gbnf(rtype: str, line_chars: int) -> str:
    # `line` holds no newline or other control character and is bounded, so a finished grammar fits in max_tokens.
    line = f'line ::= [^\\x00-\\x1f]{{1,{line_chars}}}'
    if rtype == "conversation":
        return f'root ::= pair pair pair? pair? pair? pair?\npair ::= "Q: " line "\\n" "A: " line "\\n"\n{line}\n'
    if rtype == "complex_reasoning":
        return f'root ::= "Q: " line "\\n" "A: " line\n{line}\n'
    return f'root ::= [A-Z] [^\\x00-\\x1f]{{20,{line_chars * 4}}}\n'


GRAMMARS = {rtype: _gbnf(rtype, 300) for rtype in RTYPES}


def _template_refusal(e: Exception) -> bool:
    """An error from rendering the chat template: jinja2's own, or `raise_exception` (a ValueError)."""
    if type(e).__module__.split(".")[0] == "jinja2":
        return True
    return isinstance(e, ValueError) and "exceed context window" not in str(e)


def merge_system(messages: list[dict]) -> list[dict]:
    """The system message folded into the first user message, for chat templates without a system role."""
    system, first, *rest = messages
    return [{"role": "user", "content": system["content"] + "\n\n" + first["content"]}, *rest]


@functools.lru_cache(maxsize=256)
def record_scene(record: ImageRecord) -> Scene | None:
    """The synthetic-world scene a record describes (None for other data); cached: the teacher and the
    checker both ask for it, from different threads, for the same record."""
    return scene_from_boxes(record.id, ({"category": b.category, "bbox": b.bbox} for b in record.boxes))


class TeacherBackend:
    """Correct answers from the synthetic world; records must carry "colour shape" boxes."""

    name = "teacher"
    cpu_bound = True  # pure Python: the pipeline runs it in processes, not threads

    def complete(self, request: Request) -> str:
        r = request.record
        scene = record_scene(r)
        if scene is None:
            raise DatagenError(
                f"record {r.id}: the teacher backend only knows the synthetic world (boxes named like 'red circle'); "
                "use --backend llama or --backend openai for other data")
        return teacher.respond(scene, request.rtype, random.Random(f"teacher:{request.seed}"))

    def close(self) -> None:
        pass


class OpenAIBackend:
    """Any OpenAI-compatible chat-completions endpoint."""

    name = "openai"

    def __init__(self, base_url: str, model: str, api_key: str | None, *, temperature: float = 0.2,
                 max_tokens: int = 1024, timeout: float = 60.0, policy: RetryPolicy = RetryPolicy(),
                 limiter: RateLimiter | None = None, on_retry=None) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key = model, api_key
        self.identity = f"openai:{model}"  # not the URL: the same model may move to another host
        self.temperature, self.max_tokens, self.timeout = temperature, max_tokens, timeout
        self.policy, self.limiter = policy, limiter or RateLimiter(None)
        self.on_retry = on_retry

    def _post(self, request: Request) -> str:
        body = json.dumps({
            "model": self.model, "messages": list(request.messages), "temperature": self.temperature,
            "max_tokens": self.max_tokens, "seed": request.seed,
        }).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        self.limiter.wait()
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            detail = e.read()[:200].decode("utf-8", "replace").replace("\n", " ")
            if e.code in (408, 409, 429) or e.code >= 500:
                raise Transient(f"HTTP {e.code}", parse_retry_after(e.headers.get("Retry-After"))) from None
            hint = "check the API key" if e.code in (401, 403) else "check --model and --base-url"
            raise DatagenError(f"{self.url}: HTTP {e.code} {detail}; {hint}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as e:
            raise Transient(f"{type(e).__name__}: {e}") from None
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise Transient(f"unreadable response body {raw[:80]!r}") from None
        return content or ""

    def complete(self, request: Request) -> str:
        return call_with_retries(lambda: self._post(request), self.policy, on_retry=self.on_retry)

    def close(self) -> None:
        pass


class LlamaCppBackend:
    """A local GGUF through llama-cpp-python, optionally grammar-constrained."""

    name = "llama"

    def __init__(self, model_path: Path, *, n_ctx: int = 4096, n_threads: int | None = None,
                 temperature: float = 0.2, max_tokens: int = 1024, grammar: bool = True, line_chars: int = 300,
                 seed: int = 0) -> None:
        if not Path(model_path).is_file():
            raise DatagenError(f"{model_path}: no such GGUF file; pass --model PATH.gguf")
        try:
            from llama_cpp import Llama, LlamaGrammar
        except ImportError:
            raise DatagenError("the llama backend needs llama-cpp-python: pip install llama-cpp-python") from None
        try:
            self.llm = Llama(model_path=str(model_path), n_ctx=n_ctx, n_threads=n_threads, seed=seed, verbose=False)
        except (ValueError, RuntimeError) as e:
            raise DatagenError(f"{model_path}: llama.cpp cannot load it ({e})") from None
        self.temperature, self.max_tokens = temperature, max_tokens
        self.identity = f"llama:{Path(model_path).name}"
        self.grammars = {
            t: LlamaGrammar.from_string(_gbnf(t, line_chars), verbose=False) for t in GRAMMARS
        } if grammar else {}
        self._lock = threading.Lock()

    def complete(self, request: Request) -> str:
        messages = list(request.messages)
        with self._lock:
            try:
                out = self._chat(messages, request)
            except Exception as e:
                if not _template_refusal(e) or messages[0]["role"] != "system":
                    raise self._user_error(e) from None
                # Some chat templates (Mistral-Instruct, Gemma) raise on a system role: fold it into the user turn.
                try:
                    out = self._chat(merge_system(messages), request)
                except Exception as e2:
                    raise self._user_error(e2) from None
        return out["choices"][0]["message"]["content"] or ""

    @staticmethod
    def _user_error(e: Exception) -> Exception:
        if isinstance(e, ValueError) and "exceed context window" in str(e):
            return DatagenError(f"{e}; raise --n-ctx or use fewer --shots")
        if _template_refusal(e):
            return DatagenError(f"the model's chat template cannot render our prompt ({e}); use another GGUF")
        return e

    def _chat(self, messages: list[dict], request: Request) -> dict:
        return self.llm.create_chat_completion(
            messages=messages, temperature=self.temperature, max_tokens=self.max_tokens,
            seed=request.seed, grammar=self.grammars.get(request.rtype),
        )

    def close(self) -> None:
        self.llm.close()
