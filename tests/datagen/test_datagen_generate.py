"""`llava-local data generate` end to end: a real HTTP server on 127.0.0.1, a real tiny GGUF, kill -9 + resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

from datagen_fixtures import REPO, TAGS, ScriptedServer, make_coco

from llava_local.cli import main

STRUCTURAL = {"empty", "unparseable", "unbalanced", "too_many_turns"}


def _args(coco, out, *extra):
    return ["data", "generate", "--input", str(coco / "captions.json"), str(coco / "instances.json"),
            "-o", str(out), "--per-image", "3", "--quiet", *map(str, extra)]


def _check_llava_json(samples):
    """The LLaVA JSON contract, and the training loader's own record validation."""
    from training.dataset import parse_record

    ids = [s["id"] for s in samples]
    assert len(ids) == len(set(ids))
    for s in samples:
        conv = s["conversations"]
        assert s["image"].startswith("images/") and len(conv) >= 2 and len(conv) % 2 == 0
        assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2)
        assert conv[0]["value"].startswith("<image>\n")
        assert all("<image>" not in t["value"] for t in conv[1:])
        assert all(t["value"].strip() for t in conv)
    for i, s in enumerate(samples):
        sample = parse_record(s, i)
        assert sample.images == (s["image"],) and sample.turns[0].n_images == 1


def test_openai_endpoint_with_malformed_answers_429_and_500(coco_dir, server, monkeypatch, capsys):
    monkeypatch.setenv("DATAGEN_TEST_KEY", "sk-test")
    out = coco_dir / "out" / "instruct.json"
    rc = main(_args(coco_dir, out, "--backend", "openai", "--base-url", server.url, "--model", "m",
                    "--api-key-env", "DATAGEN_TEST_KEY", "--workers", "3", "--retries", "3", "--backoff", "0.01"))
    assert rc == 0, capsys.readouterr().err
    samples = json.loads(out.read_text())
    stats = json.loads((coco_dir / "out" / "instruct.stats.json").read_text())
    assert stats["planned"] == 3 * len(TAGS)
    assert stats["rejected"] == {"unparseable": 1, "unbalanced": 1, "too_short": 1, "mentions_context": 2,
                                 "duplicate": 3}
    assert stats["accepted"] == len(samples) == 3 * len(TAGS) - 8 and stats["unfinished"] == 0
    _check_llava_json(samples)
    by_image = Counter(s["image"] for s in samples)
    assert by_image["images/000000000001.jpg"] == 3  # "good"
    assert "images/000000000008.jpg" not in by_image  # twin2 duplicates twin1
    for tag in ("flaky429", "flaky500", "badjson"):  # one failure each, then success: 2 requests per type
        assert [server.requests[(tag, t)] for t in ("conversation", "detail", "complex_reasoning")] == [2, 2, 2]
    assert server.auth == {"Bearer sk-test"}
    assert "wrote 16 samples" in capsys.readouterr().out


def test_endpoint_down_leaves_jobs_for_the_next_run(coco_dir, capsys):
    out = coco_dir / "instruct.json"
    with ScriptedServer(status_for_all=503) as down:
        rc = main(_args(coco_dir, out, "--backend", "openai", "--base-url", down.url, "--model", "m",
                        "--retries", "2", "--backoff", "0.001", "--workers", "2"))
    err = capsys.readouterr().err
    assert rc == 1 and "24 jobs failed after retries" in err and "Traceback" not in err
    assert json.loads(out.read_text()) == []
    with ScriptedServer() as up:
        assert main(_args(coco_dir, out, "--backend", "openai", "--base-url", up.url, "--model", "m")) == 0
        assert len(json.loads(out.read_text())) == 16
    with ScriptedServer(status_for_all=401) as bad_key:
        rc = main(_args(coco_dir, coco_dir / "other.json", "--backend", "openai", "--base-url", bad_key.url,
                        "--model", "m"))
    err = capsys.readouterr().err
    assert rc == 1 and "HTTP 401" in err and "API key" in err and err.count("\n") == 1


def test_timeouts_are_retried(tmp_path):
    make_coco(tmp_path, tags=("slow", "good"))
    with ScriptedServer() as s:
        assert main(_args(tmp_path, tmp_path / "o.json", "--backend", "openai", "--base-url", s.url, "--model", "m",
                          "--timeout", "0.5", "--retries", "4", "--backoff", "0.001", "--workers", "6")) == 0
        assert all(s.requests[("slow", t)] >= 2 for t in ("conversation", "detail", "complex_reasoning"))
    assert len(json.loads((tmp_path / "o.json").read_text())) == 6


def test_rate_limit_spaces_requests(tmp_path):
    make_coco(tmp_path, tags=("good", "malformed"))
    with ScriptedServer() as s:
        assert main(_args(tmp_path, tmp_path / "o.json", "--backend", "openai", "--base-url", s.url, "--model", "m",
                          "--rps", "10", "--workers", "6")) == 0
    # 6 requests at 10/s: the last leaves ≥ 0.5 s after the first slot (unlimited, 6 workers: a few ms)
    assert len(s.times) == 6 and s.times[-1] - s.times[0] >= 0.3, s.times


def test_resume_refuses_changed_input(tmp_path, capsys):
    make_coco(tmp_path, tags=("good", "malformed"))
    with ScriptedServer() as s:
        base = ["--backend", "openai", "--base-url", s.url, "--model", "m"]
        assert main(_args(tmp_path, tmp_path / "o.json", *base)) == 0
        assert main(_args(tmp_path, tmp_path / "o.json", *base, "--limit", "1")) == 1
        assert "other settings" in capsys.readouterr().err
        assert main(_args(tmp_path, tmp_path / "o.json", *base, "--limit", "1", "--restart")) == 0


def test_user_mistakes_are_one_line_errors(coco_dir, capsys):
    cases = [
        (_args(coco_dir, coco_dir / "o.json", "--backend", "openai"), "--base-url"),
        (_args(coco_dir, coco_dir / "o.json", "--backend", "llama"), "--model"),
        (_args(coco_dir, coco_dir / "o.json", "--backend", "llama", "--model", coco_dir / "no.gguf"), "no such GGUF"),
        (_args(coco_dir, coco_dir / "o.json", "--backend", "teacher"), "synthetic world"),
        (_args(coco_dir, coco_dir / "o.json", "--backend", "teacher", "--mix", "chat=1"), "unknown response type"),
        (_args(coco_dir, coco_dir / "o.json", "--image-root", coco_dir / "nowhere", "--backend", "teacher"),
         "--image-root"),
    ]
    for argv, message in cases:
        assert main(argv) != 0
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, (argv, err)


def test_progress_goes_to_stderr(tmp_path, capsys):
    make_coco(tmp_path, tags=("good", "malformed"))
    with ScriptedServer() as s:
        argv = [a for a in _args(tmp_path, tmp_path / "o.json") if a != "--quiet"]
        assert main([*argv, "--backend", "openai", "--base-url", s.url, "--model", "m"]) == 0
    cap = capsys.readouterr()
    assert "generate 6/6 | ok 3 | rejected 3 (" in cap.err and "ETA" in cap.err and "generate" not in cap.out


def test_missing_images_are_dropped_and_reported(tmp_path, capsys):
    make_coco(tmp_path, tags=("good", "malformed", "flaky429"), missing=("malformed",))
    with ScriptedServer() as s:
        assert main(_args(tmp_path, tmp_path / "o.json", "--backend", "openai", "--base-url", s.url, "--model", "m",
                          "--retries", "2", "--backoff", "0.001")) == 0
    cap = capsys.readouterr()
    assert "1 records dropped: image missing" in cap.err and "1 images missing" in cap.out
    assert {x["image"] for x in json.loads((tmp_path / "o.json").read_text())} == {
        "images/000000000001.jpg", "images/000000000003.jpg"}


def test_tiny_local_gguf_with_grammar_always_parses(tmp_path, tiny_gguf):
    make_coco(tmp_path, tags=("good", "malformed"))
    common = ["--backend", "llama", "--model", tiny_gguf, "--shots", "1", "--n-ctx", "2048", "--temperature", "1.0"]
    assert main(_args(tmp_path, tmp_path / "g.json", *common, "--max-line-chars", "40")) == 0
    stats = json.loads((tmp_path / "g.stats.json").read_text())
    assert stats["planned"] == 6 and stats["accepted"] + sum(stats["rejected"].values()) == 6
    assert not STRUCTURAL & set(stats["rejected"]), stats  # the grammar makes every answer parse
    assert stats["accepted"] >= 1
    _check_llava_json(json.loads((tmp_path / "g.json").read_text()))
    # The same random model without the grammar writes text the parser cannot read.
    assert main(_args(tmp_path, tmp_path / "n.json", *common, "--no-grammar", "--max-tokens", "60")) == 0
    stats = json.loads((tmp_path / "n.stats.json").read_text())
    assert stats["rejected"].get("unparseable", 0) >= 2, stats


def test_chat_template_without_system_role_gets_it_folded_in(tmp_path, tiny_gguf_no_system):
    from training.datagen.backends import merge_system

    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]
    assert merge_system(msgs) == [{"role": "user", "content": "S\n\nU"}, {"role": "assistant", "content": "A"}]
    make_coco(tmp_path, tags=("good",))
    assert main(_args(tmp_path, tmp_path / "m.json", "--backend", "llama", "--model", tiny_gguf_no_system,
                      "--shots", "1", "--n-ctx", "2048", "--max-line-chars", "30")) == 0
    stats = json.loads((tmp_path / "m.stats.json").read_text())
    assert stats["planned"] == 3 and stats["accepted"] + sum(stats["rejected"].values()) == 3


def test_prompt_longer_than_the_context_is_a_user_error(tmp_path, tiny_gguf, capsys):
    make_coco(tmp_path, tags=("good",))
    assert main(_args(tmp_path, tmp_path / "c.json", "--backend", "llama", "--model", tiny_gguf, "--n-ctx", "256")) == 1
    err = capsys.readouterr().err
    assert "exceed context window" in err and "--n-ctx" in err and err.count("\n") == 1


def test_killed_run_resumes_without_losing_or_duplicating(tmp_path):
    tags = tuple(f"item{i}" for i in range(36)) + ("flaky429", "malformed", "twin1", "twin2")
    make_coco(tmp_path, tags=tags)
    with ScriptedServer(delay=0.02) as s:
        base = ["--backend", "openai", "--base-url", s.url, "--model", "m", "--workers", "2", "--retries", "3",
                "--backoff", "0.001"]
        out = tmp_path / "run" / "instruct.json"
        journal = tmp_path / "run" / "instruct.journal.jsonl"
        proc = subprocess.Popen([sys.executable, "-m", "llava_local.cli", *_args(tmp_path, out, *base)], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if journal.exists() and journal.read_text().count("\n") >= 31:  # header + 30 jobs
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        done_at_kill = journal.read_text().count("\n") - 1
        assert 30 <= done_at_kill < 3 * len(tags), "the run finished before it could be killed"
        assert not out.exists()

        assert main(_args(tmp_path, out, *base)) == 0  # resume
        ref = tmp_path / "ref" / "instruct.json"
        assert main(_args(tmp_path, ref, *base)) == 0  # one uninterrupted run

    assert out.read_bytes() == ref.read_bytes()
    stats = json.loads((tmp_path / "run" / "instruct.stats.json").read_text())
    assert stats["resumed_from_journal"] >= done_at_kill and stats["planned"] == 3 * len(tags)
    jobs = [json.loads(x)["job"] for x in journal.read_text().splitlines()[1:]]
    assert len(jobs) == len(set(jobs)) == 3 * len(tags)
    samples = json.loads(out.read_text())
    assert len(samples) == 3 * len(tags) - 3 - 3  # malformed: 3 rejects; twin2: 3 duplicates
    _check_llava_json(samples)
