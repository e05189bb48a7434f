"""One layer at a time: request parsing (`serve.protocol`), image sources (`serve.images`), the worker's error path
(with the real tiny model; one injected engine failure), and the command's own checks."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys

import pytest
from servehelpers import REPO, SHAPES, free_port

from llava_local import RuntimeConfig, Turn, open_model
from llava_local.errors import EngineError
from llava_local.events import Finished
from serve.images import ImageSources
from serve.protocol import ApiError, Limits, parse_request
from serve.worker import Job, Worker

PNG = SHAPES.read_bytes()
URI = "data:image/png;base64," + base64.b64encode(PNG).decode()


def _parse(body: dict, limits: Limits = Limits(), sources=None):
    return parse_request(json.dumps(body).encode(), limits, sources or ImageSources(None, 1 << 20))


def test_messages_become_turns_images_and_a_system_prompt():
    req = _parse({"model": "anything", "user": "ignored", "tools": [], "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Use colours."}]},
        {"role": "user", "content": [{"type": "text", "text": "What is"}, {"type": "image_url",
                                                                           "image_url": {"url": URI}}]},
        {"role": "user", "content": [{"type": "image_url", "image_url": URI}, {"type": "text", "text": "here?"}]},
        {"role": "assistant", "content": "Shapes."},
        {"role": "user", "content": "More."}]})
    assert req.system == "Be brief.\nUse colours."
    assert req.turns == (Turn("user", "What is\nhere?", 2), Turn("assistant", "Shapes."), Turn("user", "More."))
    assert req.images == (PNG, PNG) and req.stream is False and req.stop == ()
    assert _parse({"messages": [{"role": "user", "content": "hi"}]}).system is None


def test_sampling_fields_map_onto_generation_config():
    req = _parse({"messages": [{"role": "user", "content": "hi"}], "temperature": 0.7, "top_p": 0.5, "seed": -1,
                  "max_tokens": 10, "max_completion_tokens": 20, "frequency_penalty": 0.5, "presence_penalty": -1,
                  "top_k": 5, "stop": ["a", "", "b"], "stream": True, "stream_options": {"include_usage": True}})
    g = req.generation
    assert (g.temperature, g.top_p, g.top_k, g.max_tokens, g.seed) == (0.7, 0.5, 5, 20, 0xFFFFFFFF)
    assert (g.frequency_penalty, g.presence_penalty, g.repeat_last_n) == (0.5, -1.0, 20)
    assert req.stop == ("a", "b") and req.stream and req.include_usage
    d = _parse({"messages": [{"role": "user", "content": "hi"}], "temperature": None, "stop": "x"}, Limits(9, 77))
    assert d.generation.max_tokens == 77 and d.generation.temperature == 0.2 and d.stop == ("x",)
    assert _parse({"messages": [{"role": "user", "content": "hi"}], "top_p": 0}).generation.temperature == 0
    seeds = {_parse({"messages": [{"role": "user", "content": "hi"}]}).generation.seed for _ in range(4)}
    assert len(seeds) > 1  # no seed given: a fresh one each time


@pytest.mark.parametrize("body,param", [
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": True}, "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}], "seed": "1"}, "seed"),
    ({"messages": [{"role": "user", "content": "hi"}], "stop": ["a"] * 17}, "stop"),
    ({"messages": [{"role": "user", "content": "hi"}], "logprobs": True}, "logprobs"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "messages[0].content[0].image_url"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None,
                                                       "tool_calls": [{}]}]}, "messages[1].role"),
])
def test_bad_fields_name_their_param(body, param):
    with pytest.raises(ApiError) as e:
        _parse(body)
    assert e.value.status == 400 and e.value.param == param


def test_image_count_is_checked_before_any_image_is_read():
    def never(url: str, param: str) -> bytes:
        raise AssertionError("an image was read")

    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": URI}}] * 3}]}
    with pytest.raises(ApiError) as e:
        parse_request(json.dumps(body).encode(), Limits(max_images=2), never)
    assert e.value.code == "too_many_images"


def test_image_sources(tmp_path):
    data = ImageSources(None, 2000)
    assert data("data:image/png;base64," + "\n".join(base64.b64encode(PNG).decode()[i:i + 76]
                                                     for i in range(0, 1500, 76)), "p") == PNG
    assert data("data:,hello%20there", "p") == b"hello there"
    for url, status in (("data:image/png;base64," + base64.b64encode(b"x" * 3000).decode(), 413),
                        ("data:image/png;base64,", 400), ("data:image/png;base64", 400), ("/etc/passwd", 400),
                        ("file:///etc/passwd", 400), ("HTTPS://example.com/x.png", 400)):
        with pytest.raises(ApiError) as e:
            data(url, "p")
        assert e.value.status == status, url

    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.png").write_bytes(PNG)
    (root / "big.png").write_bytes(b"x" * 3000)
    (root / "up").symlink_to(tmp_path)
    files = ImageSources(root, 2000)
    assert files("sub/a.png", "p") == files(f"file://{root}/sub/a.png", "p") == files(str(root / "sub/a.png"), "p")
    assert files("sub/../sub/a.png", "p") == PNG  # `..` that stays inside is fine
    for url, status in (("up/root/sub/a.png", 200), ("../root/sub/a.png", 200), ("up/x.png", 403), ("..", 403),
                        ("/etc/passwd", 403), ("big.png", 413), ("missing.png", 400), ("sub", 400),
                        ("file://otherhost/sub/a.png", 400)):
        if status == 200:  # through a link or `..` but back inside root
            assert files(url, "p") == PNG
            continue
        with pytest.raises(ApiError) as e:
            files(url, "p")
        assert e.value.status == status, url


def test_worker_turns_an_engine_failure_into_a_500_and_keeps_serving(long_bundle, monkeypatch):
    model = open_model(long_bundle, RuntimeConfig(device="cpu", n_threads=1))
    worker = Worker(model, queue_size=2)
    answer = worker.session.answer
    calls = []

    def failing_once(*args, **kw):
        calls.append(1)
        if len(calls) == 1:
            raise EngineError("llama.cpp decode failed: injected")
        return answer(*args, **kw)

    monkeypatch.setattr(worker.session, "answer", failing_once)
    req = _parse({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0})

    async def one():
        job = Job(req, asyncio.get_running_loop())
        worker.submit(job)
        while True:
            item = await job.out.get()
            if isinstance(item, (ApiError, Finished)):
                return item

    async def both():
        return await one(), await one()

    worker.start()
    try:
        failed, ok = asyncio.run(both())
    finally:
        worker.stop()
        model.close()
    assert failed.status == 500 and failed.code == "engine_error" and "injected" in failed.message
    assert isinstance(ok, Finished) and ok.n_generated == 3
    assert worker.counters["errors"] == 1 and worker.counters["completed"] == 1


def _serve(*args: str, env_home) -> subprocess.CompletedProcess:
    """`llava-local serve ARGS` through the real CLI (the command is found through its entry point)."""
    return subprocess.run([sys.executable, "-m", "llava_local.cli", "serve", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={"LLAVA_LOCAL_HOME": str(env_home), "PATH": "/usr/bin:/bin"})


def test_command_line_mistakes_are_one_line(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = _serve("--port", str(port), env_home=tmp_path)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "pick another --port" in r.stderr, r.stderr
        # another host without a key: one warning line, then the same port error (nothing is served)
        r = _serve("--host", "0.0.0.0", "--port", str(port), env_home=tmp_path)
        lines = r.stderr.splitlines()
        assert r.returncode == 2 and len(lines) == 2 and "without an API key" in lines[0], r.stderr
    for args in (["--port", "70000"], ["--queue", "-1"], ["--allow-files", str(tmp_path / "nope")],
                 ["--model", str(tmp_path / "nope"), "--port", str(free_port())]):
        r = _serve(*args, env_home=tmp_path)
        assert r.returncode != 0 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, (args, r.stderr)
