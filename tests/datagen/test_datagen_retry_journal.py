"""Backoff, Retry-After, rate limiting, and the journal's torn-tail / settings rules (unit level)."""

from __future__ import annotations

import json
import random
from email.utils import formatdate

import pytest

from training.datagen.journal import Journal
from training.datagen.progress import Progress
from training.datagen.records import DatagenError
from training.datagen.retry import GaveUp, RateLimiter, RetryPolicy, Transient, call_with_retries, parse_retry_after


def test_backoff_doubles_with_jitter_and_caps():
    p = RetryPolicy(attempts=6, base=1.0, cap=5.0)
    rng = random.Random(0)
    delays = [p.delay(k, None, rng) for k in range(1, 6)]
    for k, d in enumerate(delays, 1):
        full = min(5.0, 2 ** (k - 1))
        assert full / 2 <= d <= full
    assert p.delay(1, 42.0, rng) == 42.0 and p.delay(1, 1e6, rng) == p.max_retry_after


def test_retries_honour_retry_after_then_give_up():
    slept, calls = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise Transient("429", retry_after=7.0 if len(calls) == 1 else None)
        return "ok"

    assert call_with_retries(flaky, RetryPolicy(attempts=3, base=0.5), sleep=slept.append) == "ok"
    assert slept[0] == 7.0 and 0.25 <= slept[1] <= 1.0

    def always():
        raise Transient("500")

    with pytest.raises(GaveUp, match="after 2 attempts"):
        call_with_retries(always, RetryPolicy(attempts=2), sleep=lambda s: None)


def test_retry_after_parses_seconds_and_http_dates():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert 9.0 <= parse_retry_after(formatdate(1000.0 + 10, usegmt=True), now=1000.0) <= 10.0


def test_rate_limiter_spaces_calls():
    now = [0.0]

    def sleep(s):
        now[0] += s

    lim = RateLimiter(4.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(5):
        lim.wait()
    assert now[0] == pytest.approx(1.0)  # 5 calls at 4/s: the 5th starts at t = 1 s


SETTINGS = {"seed": 0}


def test_journal_cuts_a_torn_tail_and_keeps_finished_jobs(tmp_path):
    path = tmp_path / "j.jsonl"
    with Journal(path, SETTINGS) as j:
        j.commit([{"job": "a", "sample": {"id": "a"}}, {"job": "b", "reject": "empty", "detail": ""}])
    with open(path, "a") as fh:
        fh.write('{"job": "c", "sam')  # the process died mid-write
    with Journal(path, SETTINGS) as j:
        assert set(j.done) == {"a", "b"}
        j.commit([{"job": "c", "sample": {"id": "c"}}])
    lines = path.read_text().splitlines()
    assert [json.loads(x).get("job") for x in lines] == [None, "a", "b", "c"]


def test_journal_refuses_other_settings_and_corruption(tmp_path):
    path = tmp_path / "j.jsonl"
    Journal(path, SETTINGS).close()
    with pytest.raises(DatagenError, match="other settings"):
        Journal(path, {"seed": 1})
    Journal(path, {"seed": 1}, restart=True).close()
    path.write_text(path.read_text() + "garbage\n" + '{"job": "a", "sample": {}}\n')
    with pytest.raises(DatagenError, match="corrupt"):
        Journal(path, {"seed": 1})


def test_progress_line_counts_rejects_and_eta():
    class Sink:
        def __init__(self):
            self.text = ""

        def write(self, s):
            self.text += s

        def flush(self):
            pass

    t = [0.0]
    sink = Sink()
    p = Progress("generate", total=10, skipped=2, stream=sink, interval=1.0, clock=lambda: t[0])
    for outcome in ("ok", "ok", "unparseable", "backend_error"):
        t[0] += 0.5
        p.update(outcome)
    p.finish()
    last = sink.text.strip().splitlines()[-1]
    assert last.startswith("generate 6/10 | ok 2 | rejected 1 (unparseable 1) | failed 1 | 2.0/s ETA 0:00:02")
