"""The worker under load: a full wait list gets 503 + Retry-After, a client that leaves mid-stream frees the worker,
and SIGTERM stops the server cleanly with a stream in flight.

The server runs a tiny random bundle with a 4,096-token context (`long_server`, `--queue 1`): its greedy answer to
anything runs past 3,900 tokens, about ten seconds here, which is what these tests need; what it says does
not matter. No timing is asserted against a fixed number: the gap after a disconnect is compared with the time the
abandoned answer still had to run, computed from its own measured speed.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator

import httpx
from servehelpers import start_server

LONG = {"model": "m", "temperature": 0, "max_tokens": 3600, "stream": True,
        "messages": [{"role": "user", "content": "Tell me a long story."}]}


def _stream_some(server, n_chunks: int) -> tuple[httpx.Client, httpx.Response, Iterator[str]]:
    """Start a long streamed answer and read `n_chunks` content chunks of it. The response stays open as long as
    the returned line iterator lives (httpx closes the connection when an abandoned iterator is collected)."""
    client = httpx.Client(timeout=60)
    req = client.build_request("POST", f"{server.url}/v1/chat/completions", json=LONG, headers=server.headers)
    resp = client.send(req, stream=True)
    assert resp.status_code == 200
    lines = resp.iter_lines()
    seen = 0
    while seen < n_chunks:
        line = next(lines)
        if line.startswith("data: {") and '"content"' in line:
            seen += 1
    return client, resp, lines


def _wait_for(predicate, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_full_queue_gets_503_and_a_disconnect_frees_the_worker(long_server):
    client, resp, lines = _stream_some(long_server, 20)
    short: dict = {}

    def waiting_request() -> None:
        r = httpx.post(f"{long_server.url}/v1/chat/completions", timeout=60,
                       json={"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]})
        short["done"] = time.monotonic()
        short["text"] = r.json()["choices"][0]["message"]["content"]

    t = threading.Thread(target=waiting_request)
    t.start()
    _wait_for(lambda: httpx.get(f"{long_server.url}/health").json()["waiting"] == 1)

    # one answer running, one waiting, --queue 1: the third is turned away
    busy = httpx.post(f"{long_server.url}/v1/chat/completions", json={**LONG, "stream": False})
    assert busy.status_code == 503 and int(busy.headers["Retry-After"]) >= 1
    assert busy.json()["error"]["code"] == "server_busy"

    assert httpx.get(f"{long_server.url}/health").json()["busy"]  # the long answer is still running
    resp.close()  # the streaming client goes away mid-answer
    client.close()
    del lines
    left = time.monotonic()
    t.join(60)
    assert short["text"] is not None
    gap = short["done"] - left

    stats = long_server.stats()
    cancelled = [r for r in stats["recent"] if r.get("stop_reason") == "cancelled"]
    assert stats["counters"]["cancelled"] == 1 and len(cancelled) == 1
    abandoned = cancelled[0]
    assert 20 <= abandoned["n_generated"] < LONG["max_tokens"] // 2
    # What the abandoned answer still had to generate, at the speed it was going: the waiting request did not wait
    # for it. (Over 1,800 tokens at a few hundred per second: seconds, against a gap of milliseconds.)
    remaining = (LONG["max_tokens"] - abandoned["n_generated"]) / abandoned["tokens_per_second"]
    assert gap < remaining / 2, (gap, remaining)
    assert stats["recent"][-1]["stop_reason"] in ("eos", "length")  # the short one ran after it


def test_sigterm_stops_cleanly_with_a_stream_in_flight(tmp_path, long_bundle):
    server = start_server(tmp_path, long_bundle)
    try:
        client, resp, lines = _stream_some(server, 10)
        server.proc.send_signal(signal.SIGTERM)
        tail = [line for line in lines if line.startswith("data: ")]  # the stream ends, not hangs
        client.close()
        # uvicorn shuts down gracefully, then re-raises the signal; the CLI's edge turns it into exit 143, as every
        # llava-local command ends on SIGTERM
        assert server.proc.wait(30) == 128 + signal.SIGTERM
        assert all(line == "data: [DONE]" or json.loads(line[6:]) for line in tail)
        log = server.log_text()
        assert "Traceback" not in log and "Application shutdown complete" in log and "Finished server process" in log
    finally:
        server.stop()
