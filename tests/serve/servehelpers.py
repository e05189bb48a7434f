"""Helpers for the server tests: start a real `python -m serve` process on a free 127.0.0.1 port and talk to it.

`start_server(tmp, bundle, *flags, key=None)` waits until `/health` answers; the process gets its own
LLAVA_LOCAL_HOME (so its embedding cache starts empty) and one llama.cpp thread. `Server.client()` is the official
`openai` client pointed at it, `Server.stats()` its `/v1/stats`.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "models" / "llava-local-tiny"
SHAPES = REPO / "examples" / "shapes.png"
KEY = "test-key-0123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    log: Path
    key: str | None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    def client(self, **kw):
        from openai import OpenAI

        kw = {"base_url": f"{self.url}/v1", "api_key": self.key or "none", "max_retries": 0, "timeout": 120, **kw}
        return OpenAI(**kw)

    def stats(self) -> dict:
        return httpx.get(f"{self.url}/v1/stats", headers=self.headers, timeout=30).json()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_server(tmp: Path, model: Path, *args: str, key: str | None = None) -> Server:
    port = free_port()
    env = {**os.environ, "LLAVA_LOCAL_HOME": str(tmp / "home"), "LLAVA_LOCAL_THREADS": "1"}
    env.pop("LLAVA_LOCAL_API_KEY", None)
    log = tmp / f"server-{port}.log"
    cmd = [sys.executable, "-m", "serve", "--model", str(model), "--port", str(port), *args]
    if key:
        cmd += ["--api-key", key]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(proc, port, log, key)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{server.log_text()}")
        try:
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.stop()
    raise AssertionError(f"server did not come up:\n{server.log_text()}")


