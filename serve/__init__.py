"""llava-local's OpenAI-compatible server: `llava-local serve` (or `python -m serve`).

Layers, one module each: `protocol` (request JSON → `ChatRequest`, response objects, error objects), `images`
(data: URIs and `--allow-files` paths → bytes), `worker` (the thread that owns the model and answers requests in
arrival order, with KV-cache reuse across requests), `app` (Starlette routes, auth, streaming), `cli` (flags,
binding, uvicorn). Uses only `llava_local`'s public API; the web stack is the `[serve]` extra.
"""
