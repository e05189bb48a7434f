"""The judge ensemble against a real OpenAI-compatible HTTP server on 127.0.0.1 (stdlib http.server in a thread).

LLaVA's answers come from a predictions file whose meta names the demo bundle: `eval scienceqa` then asks only
the judge (the resume path), so these tests exercise the judge layer, the HTTP backend, its retries and the
ensembles without running a vision model. The server answers from a script keyed by the question text.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from llava_local.cli import main
from training.scienceqa.evaluate import bundle_identity

BUNDLE = Path(__file__).resolve().parents[2] / "models" / "llava-local-tiny"
# question → (LLaVA's answer, the judge's first answer, the judge's second answer or None when none is expected)
SCRIPT = {
    "Q agree": ("B", "Reasoning. The answer is B.", None),
    "Q differ": ("A", "The answer is B.", "Having weighed both, The answer is C."),
    "Q garbage": ("A", "Hmm, hard to say.", "I really cannot decide."),
    "Q slow": ("B", "The answer is A.", "The answer is A."),
}
ANSWER = {"Q agree": 1, "Q differ": 2, "Q garbage": 0, "Q slow": 0}  # the right choice of each


class Server:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []  # (question, round)
        self.slow: set[str] = set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                user = body["messages"][-1]["content"]
                q = next(k for k in SCRIPT if f"Question: {k}\n" in user)
                rnd = 2 if "Two answers were proposed" in user else 1
                server.calls.append((q, rnd))
                if q in server.slow:
                    time.sleep(1.0)  # longer than the client's timeout
                text = SCRIPT[q][rnd]
                data = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def _release(root: Path, questions: list[str]) -> Path:
    problems, pids = {}, []
    for i, q in enumerate(questions):
        pid = str(i + 1)
        problems[pid] = {"question": q, "choices": ["x", "y", "z"], "answer": ANSWER[q], "hint": "A hint.",
                         "image": None, "subject": "natural science", "grade": "grade3", "lecture": "",
                         "solution": "", "split": "test"}
        pids.append(pid)
    root.mkdir(parents=True, exist_ok=True)
    (root / "problems.json").write_text(json.dumps(problems))
    (root / "pid_splits.json").write_text(json.dumps({"test": pids}))
    # LLaVA's answers, as a finished run of this bundle would have written them
    meta = {"kind": "meta", "suite": "scienceqa", "split": "test", **bundle_identity(BUNDLE, None)}
    lines = [meta] + [{"kind": "answer", "question_id": str(i + 1), "prompt": q, "text": SCRIPT[q][0]}
                      for i, q in enumerate(questions)]
    pred = root / "pred.jsonl"
    pred.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return pred


def _eval(root: Path, pred: Path, url: str, *extra: str) -> int:
    return main(["eval", "scienceqa", str(BUNDLE), "--base-dir", str(root), "-o", str(pred), "--json", "--quiet",
                 "--judge", "openai", "--judge-model", "judge-llm", "--judge-base-url", url, *extra])


def _result(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_agreement_disagreement_and_garbage(server, tmp_path, capsys):
    root = tmp_path / "r"
    pred = _release(root, ["Q agree", "Q differ", "Q garbage"])
    assert _eval(root, pred, server.url, "--fallback", "wrong") == 0
    res = _result(capsys)
    # agreement: one call; disagreement and garbage: a second round each
    assert sorted(server.calls) == [("Q agree", 1), ("Q differ", 1), ("Q differ", 2), ("Q garbage", 1),
                                    ("Q garbage", 2)]
    counts = res["counts"]
    # LLaVA: agree right (B), differ wrong (A vs C), garbage right (A)
    assert counts["LLaVA"]["Avg"] == [2, 3]
    # judge alone: agree right, differ wrong (B), garbage unreadable → wrong under --fallback wrong
    assert counts["judge"]["Avg"] == [1, 3]
    # complement: the judge's answer, LLaVA's where the judge's cannot be read (garbage → A, right)
    assert counts["complement"]["Avg"] == [2, 3]
    # judge ensemble: agree → B; differ → the second answer C (right); garbage second answer → LLaVA's A (right)
    assert counts["judge ensemble"]["Avg"] == [3, 3]
    assert res["judge"] == {"asked": 3, "second_rounds": 2, "first_unreadable": 1, "second_unreadable": 1}
    recs = [json.loads(x) for x in pred.read_text().splitlines()[1:]]
    by_q = {r["prompt"]: r for r in recs if "judge" in r}
    assert by_q["Q differ"]["judge"]["second"] == SCRIPT["Q differ"][2]
    assert by_q["Q agree"]["judge"]["second"] is None
    # a rerun asks nothing: every question already has this judge's verdict
    server.calls.clear()
    assert _eval(root, pred, server.url) == 0
    assert server.calls == []


def test_timeout_retries_then_one_line_error_and_resume(server, tmp_path, capsys):
    root = tmp_path / "r"
    pred = _release(root, ["Q agree", "Q differ", "Q slow"])
    server.slow.add("Q slow")
    rc = _eval(root, pred, server.url, "--judge-timeout", "0.2", "--judge-retries", "3", "--judge-backoff", "0.01")
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert err.startswith("llava-local:") and "\n" not in err and "Traceback" not in err
    assert "problem 3" in err and "run the same command again" in err
    assert server.calls.count(("Q slow", 1)) == 3  # retried up to the attempt limit
    finished = [c for c in server.calls if c[0] != "Q slow"]
    assert finished == [("Q agree", 1), ("Q differ", 1), ("Q differ", 2)]
    # the server recovers; the rerun asks only the unfinished question
    server.slow.clear()
    server.calls.clear()
    assert _eval(root, pred, server.url) == 0
    assert server.calls == [("Q slow", 1), ("Q slow", 2)]
    assert _result(capsys)["judge"]["asked"] == 3
