"""Fixtures for the server tests: real `python -m serve` processes on free 127.0.0.1 ports.

- `demo_server` (module): the shipped demo bundle (it knows coloured shapes, so answers can be checked), with an API
  key, `--allow-files` on a temporary directory and a 1 MiB body limit.
- `long_server` (module): a tiny random bundle (tests/runtime/tinyllava.py) with a 4,096-token context, whose greedy
  answer to anything runs past 3,900 tokens; `--queue 1`. For what needs a long answer, not a right one.
- `demo_reference`: the demo model opened in this process, to compute the answers the server must give.
Each server has its own LLAVA_LOCAL_HOME (so its embedding cache starts empty) and one llama.cpp thread.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "models" / "llava-local-tiny"
SHAPES = REPO / "examples" / "shapes.png"
KEY = "test-key-0123"
sys.path.insert(0, str(REPO / "tests" / "runtime"))  # tinyllava, the test-only bundle builder
sys.path.insert(0, str(REPO / "tests"))  # tiny_gguf, which tinyllava imports


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


@pytest.fixture(scope="module")
def allowed_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("allowed")
    (d / "shapes.png").write_bytes(SHAPES.read_bytes())
    return d


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory, allowed_dir) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("demo-server"), DEMO, "--allow-files", str(allowed_dir),
                          "--max-body-mb", "1", key=KEY)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def long_bundle(tmp_path_factory) -> Path:
    import tinyllava

    return tinyllava.build_bundle(tmp_path_factory.mktemp("long") / "tiny", ctx=4096)


@pytest.fixture(scope="module")
def long_server(tmp_path_factory, long_bundle) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("long-server"), long_bundle, "--queue", "1")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def demo_reference(tmp_path_factory):
    """`answer(turns_so_far_questions, ...)`: greedy answers of an in-process ChatSession on the demo model."""
    from llava_local import ChatSession, GenerationConfig, RuntimeConfig, open_model
    from llava_local.events import Finished

    with pytest.MonkeyPatch.context() as mp:  # the model's embedding cache lives in its own home
        mp.setenv("LLAVA_LOCAL_HOME", str(tmp_path_factory.mktemp("ref-home")))
        model = open_model(DEMO, RuntimeConfig(device="cpu", n_threads=1))

    def answers(questions: list[str], image: Path, max_tokens: int = 64) -> list[str]:
        """The answers to a conversation: the image goes with the first question."""
        s = ChatSession(model, GenerationConfig(temperature=0, max_tokens=max_tokens))
        out = []
        for i, q in enumerate(questions):
            fin = [e for e in s.ask(q, images=[image] if i == 0 else []) if isinstance(e, Finished)][0]
            out.append(fin.text)
        return out

    yield answers
    model.close()
