"""`llava-local serve`: load one model and serve it over OpenAI's chat-completions protocol until Ctrl-C/SIGTERM.

Contract (a `llava_local.commands` entry point): `HELP`, `EXTRA`, `add_arguments(parser)`, `run(args) -> int`. The
ASGI stack (starlette, uvicorn, sse-starlette: the `[serve]` extra) is imported inside `run`, so `llava-local --help`
stays light. User mistakes (bad flags, a model that does not load, a port in use, a missing extra) raise
`LlavaLocalError`: one line on stderr. Binds to 127.0.0.1 by default; binding anywhere else without an API key
prints a one-line warning. The listening socket is bound before the model loads, so a busy port costs no load time;
`--port 0` takes a free port, and the line printed once the server listens names the real one.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
from pathlib import Path

from llava_local.config import DEVICES
from llava_local.errors import LlavaLocalError, UsageError

HELP = "serve a model over an OpenAI-compatible HTTP API (needs the [serve] extra)"
EXTRA = "serve"
KEY_ENV = "LLAVA_LOCAL_API_KEY"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", "-m", default=None,
                        help="bundle directory or installed model name (default: $LLAVA_LOCAL_MODEL, 'default', demo)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on; 0 picks a free one (default 8080)")
    parser.add_argument("--api-key", dest="api_key", default=None,
                        help=f"require 'Authorization: Bearer KEY' on /v1/ (default: ${KEY_ENV}, else none)")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="where to run (default: auto)")
    parser.add_argument("--quant", default=None, help="which GGUF of the bundle (default: the bundle's)")
    parser.add_argument("--n-ctx", dest="n_ctx", type=int, default=None,
                        help="context size in tokens: conversation plus answer (default: the bundle's)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: $LLAVA_LOCAL_THREADS or all)")
    parser.add_argument("--allow-files", dest="allow_files", type=Path, default=None, metavar="DIR",
                        help="let image_url name local files (plain paths or file://), only inside DIR")
    parser.add_argument("--queue", type=int, default=8,
                        help="requests that may wait while one is answered; more get 503 (default 8)")
    parser.add_argument("--max-images", dest="max_images", type=int, default=16,
                        help="images per conversation (default 16, and never more than fit in the context)")
    parser.add_argument("--max-body-mb", dest="max_body_mb", type=float, default=32.0,
                        help="largest request body in MiB, images included (default 32)")
    parser.add_argument("--log-level", dest="log_level", default="info",
                        choices=("critical", "error", "warning", "info", "debug"),
                        help="server log on stderr; info logs one line per request (default info)")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UsageError(f"--host {host}: {e.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror}; pick another --port") from None
    sock.set_inheritable(True)
    return sock


def _check(args: argparse.Namespace) -> None:
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be in 0..65535, got {args.port}")
    for flag, value, low in (("--queue", args.queue, 0), ("--max-images", args.max_images, 0),
                             ("--threads", args.threads, 1), ("--n-ctx", args.n_ctx, 1)):
        if value is not None and value < low:
            raise UsageError(f"{flag} must be >= {low}, got {value}")
    if not args.max_body_mb > 0:
        raise UsageError(f"--max-body-mb must be > 0, got {args.max_body_mb}")
    if args.allow_files is not None and not args.allow_files.expanduser().is_dir():
        raise UsageError(f"--allow-files {args.allow_files}: not a directory")


def run(args: argparse.Namespace) -> int:
    _check(args)
    try:
        import uvicorn

        from .app import Settings, create_app
        from .images import ImageSources
        from .protocol import Limits
        from .worker import Worker
    except ImportError as e:
        raise LlavaLocalError(f"`llava-local serve` needs {e.name or 'its web stack'}: "
                              "pip install 'llava-local[serve]'") from None
    from llava_local import RuntimeConfig, open_model

    key = args.api_key or os.environ.get(KEY_ENV) or None
    if not _is_loopback(args.host) and not key:
        print(f"llava-local serve: warning: listening on {args.host} without an API key: anyone who can reach this "
              f"port can use the model (set --api-key or ${KEY_ENV})", file=sys.stderr)
    sock = _bind(args.host, args.port)
    try:
        model = open_model(args.model, RuntimeConfig(device=args.device, n_ctx=args.n_ctx, n_threads=args.threads,
                                                     quant=args.quant))
    except BaseException:
        sock.close()
        raise
    worker = None
    try:
        info = model.info
        max_images = min(args.max_images, info.context_length // max(1, info.tokens_per_image))
        max_body = int(args.max_body_mb * 1024 * 1024)
        settings = Settings(model_name=info.name, api_key=key, limits=Limits(max_images=max_images),
                            images=ImageSources(args.allow_files, max_body), max_body=max_body)
        worker = Worker(model, args.queue)
        app = create_app(worker, settings)
        config = uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=5, lifespan="on",
                                server_header=False)
        server = uvicorn.Server(config)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        print(f"llava-local serve: {info.name} ({info.llm_backend}, context {info.context_length}) on "
              f"http://{shown}:{port}/v1{' (API key required)' if key else ''}; Ctrl-C stops", file=sys.stderr,
              flush=True)
        server.run(sockets=[sock])
    finally:
        sock.close()
        if worker is None or not worker.alive:  # a worker still inside llama.cpp (a long prefill) keeps the model
            model.close()
    return 0
