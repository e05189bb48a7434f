"""`python -m bench.serve`: the same conversation through `llava-local serve` and through an in-process ChatSession.

What it measures, side by side in one run (runs interleaved: in-process, server, in-process, server, ...), as the
caller sees it:
- time to first token of a first turn with a new image: from the call to the moment the answer starts (image read,
  preprocessing, vision encoder, prefill; for the server also base64, HTTP, JSON and the first SSE chunk). "Starts"
  is the in-process `PromptProcessed` event and the server's first chunk, which it sends at that event: the first
  token itself follows one decode step later on both sides. (Timing the first visible text would not work on the
  random bench model, whose tokens mostly render as nothing.)
- decode speed: generated tokens divided by the time from the answer's start to its end (the in-process `Finished`,
  the server's chunk with `finish_reason`);
- time to first token of a follow-up turn: the server's client resends the whole history (as OpenAI clients do), the
  in-process session just asks; both should decode only the new question (KV prefix reuse).
The server is a real `python -m serve` process driven by the official `openai` client (streaming); each side has its
own empty LLAVA_LOCAL_HOME, so both encode each image once. Every repeat uses a new image (the same images on both
sides). Best and median per measurement, and server / in-process ratios of the best runs.

Self-contained: the model is `--model BUNDLE`, else the bench model that `python -m bench` builds under
`bench-out/full/bundle` (built here through `bench.build` when missing). The numbers go into their own section at the
end of docs/benchmarks.md (between markers, replaced on every run).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- bench.serve: begin -->", "<!-- bench.serve: end -->"
QUESTION = "Describe the image in detail."
FOLLOW_UP = "What else can you see?"


def _png(seed: int, size: int) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1000 + seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _summary(t0: float, started: float, ended: float, n_tokens: int, text: str) -> dict[str, Any]:
    """`started`: the answer begins (prefill done); `ended`: the last token. Tokens/s over that span."""
    return {"ttft": started - t0, "tokens_per_second": n_tokens / (ended - started) if ended > started else 0.0,
            "tokens": n_tokens, "text": text}


class InProcess:
    def __init__(self, bundle: Path, threads: int, home: Path) -> None:
        os.environ["LLAVA_LOCAL_HOME"] = str(home)
        from llava_local import GenerationConfig, RuntimeConfig, open_model

        self.model = open_model(bundle, RuntimeConfig(device="cpu", n_threads=threads))
        self.gen = GenerationConfig

    def run(self, png: bytes, tokens: int) -> dict[str, Any]:
        from llava_local import ChatSession
        from llava_local.events import Finished, PromptProcessed

        s = ChatSession(self.model, self.gen(temperature=0, max_tokens=tokens))
        out: dict[str, Any] = {}
        for key, question, images in (("first", QUESTION, [png]), ("follow_up", FOLLOW_UP, [])):
            t0 = time.perf_counter()
            for ev in s.ask(question, images=images):
                if isinstance(ev, PromptProcessed):
                    started = time.perf_counter()
                elif isinstance(ev, Finished):
                    out[key] = _summary(t0, started, time.perf_counter(), ev.n_generated, ev.text)
        return out


class Server:
    def __init__(self, bundle: Path, threads: int, home: Path) -> None:
        from openai import OpenAI

        self.port = _free_port()
        env = {**os.environ, "LLAVA_LOCAL_HOME": str(home)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "serve", "--model", str(bundle), "--port", str(self.port), "--device", "cpu",
             "--threads", str(threads), "--log-level", "warning"], cwd=REPO, env=env, stderr=subprocess.PIPE)
        import httpx

        deadline = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"bench: the server exited: {self.proc.stderr.read().decode(errors='replace')}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise SystemExit("bench: the server did not come up") from None
            time.sleep(0.2)
        self.client = OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key="none", max_retries=0, timeout=600)

    def run(self, png: bytes, tokens: int) -> dict[str, Any]:
        import base64

        url = "data:image/png;base64," + base64.b64encode(png).decode()
        messages: list[dict[str, Any]] = [{"role": "user", "content": [
            {"type": "text", "text": QUESTION}, {"type": "image_url", "image_url": {"url": url}}]}]
        out: dict[str, Any] = {}
        for key in ("first", "follow_up"):
            t0 = time.perf_counter()
            stream = self.client.chat.completions.create(
                model="m", messages=messages, temperature=0, max_tokens=tokens, stream=True,
                stream_options={"include_usage": True})
            started = ended = None
            text, usage = "", None
            for c in stream:  # the first chunk (role) is sent when the prefill is done, as PromptProcessed
                started = started or time.perf_counter()
                if c.choices:
                    text += c.choices[0].delta.content or ""
                    if c.choices[0].finish_reason:
                        ended = time.perf_counter()
                if c.usage is not None:
                    usage = c.usage
            out[key] = _summary(t0, started, ended, usage.completion_tokens, text)
            out[key]["cached_tokens"] = usage.prompt_tokens_details.cached_tokens
            messages += [{"role": "assistant", "content": text}, {"role": "user", "content": FOLLOW_UP}]
        return out

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _shown(path: Path) -> str:
    """`path` relative to the repository when it is inside it (the report should not name this machine's dirs)."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _bench_bundle(quick: bool) -> Path:
    from bench.build import QUICK, BenchSizes, ensure_bundle

    return ensure_bundle(REPO / "bench-out" / ("quick" if quick else "full"), QUICK if quick else BenchSizes())[1]


def _stats(runs: list[dict[str, Any]], key: str, field: str, best=min) -> dict[str, float]:
    values = [r[key][field] for r in runs]
    return {"best": best(values), "median": statistics.median(values)}


def render(res: dict[str, Any]) -> str:
    ip, sv = res["in_process"], res["server"]
    rows = [("time to first token, new image (s)", "first", "ttft", min),
            ("decode tokens/s", "first", "tokens_per_second", max),
            ("time to first token, follow-up turn (s)", "follow_up", "ttft", min)]
    lines = [BEGIN, "## Server (`llava-local serve`) vs in-process `ChatSession`", "",
             f"Generated by `python -m bench.serve` on {res['date']}: {res['model']}, {res['repeats']} interleaved "
             f"runs per side, {res['threads']} thread(s), greedy, {res['tokens']} tokens per answer; "
             f"{res['machine']}; load average before/after {res['load_before']} / {res['load_after']}.", "",
             "The server runs as its own process, driven by the official `openai` client with streaming (base64 image "
             "in a data: URI, HTTP, JSON, SSE); in-process is `ChatSession.ask` in the benchmark's process. Each "
             "first turn has a new image (both sides encode it once); the follow-up resends the whole history to the "
             "server, which reuses the KV prefix "
             f"(cached_tokens of the server's follow-ups: {res['server_cached_tokens']}). Time to first token runs to "
             "the answer's start (the prefill is done and the first token is being sampled: in-process the "
             "`PromptProcessed` event, for the server its first SSE chunk, sent at that event); decode tokens/s from "
             "there to the answer's end.", "",
             "| measurement | in-process best / median | server best / median | server / in-process (best) |",
             "| --- | ---: | ---: | ---: |"]
    for label, key, field, best in rows:
        a, b = _stats(ip, key, field, best), _stats(sv, key, field, best)
        ratio = b["best"] / a["best"] if a["best"] else float("nan")
        lines.append(f"| {label} | {a['best']:.3f} / {a['median']:.3f} | {b['best']:.3f} / {b['median']:.3f} | "
                     f"{ratio:.3f} |")
    lines += ["", f"Answers identical on both sides (text and token count): {res['same_answers']}. What a follow-up "
              "costs the server beyond the in-process session is per-request work, not prefill (cached_tokens above: "
              "the whole earlier prompt was reused): the client resends the conversation, image included, the server "
              "parses it, decodes and hashes the image, re-tokenizes the text, and the answer crosses two processes "
              "and a socket.", END, ""]
    return "\n".join(lines)


def write_section(report: Path, section: str) -> None:
    text = report.read_text() if report.is_file() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + section.rstrip("\n") + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    report.write_text(text if text.endswith("\n") else text + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="bundle (default: the bench model, built if missing)")
    ap.add_argument("--quick", action="store_true", help="the small bench model (a smoke test of this benchmark)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64, help="tokens per answer (default 64)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads on both sides (default 1)")
    ap.add_argument("--report", type=Path, default=REPO / "docs" / "benchmarks.md")
    ap.add_argument("--no-report", action="store_true", help="print only")
    args = ap.parse_args(argv)
    bundle = args.model or _bench_bundle(args.quick)
    from llava_local.manifest import load_manifest

    manifest = load_manifest(bundle)
    size = manifest.preprocess.size
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        server = Server(bundle, args.threads, Path(tmp) / "server-home")
        try:
            local = InProcess(bundle, args.threads, Path(tmp) / "local-home")
            runs_ip, runs_sv = [], []
            for i in range(args.repeats):
                png = _png(i, size)
                runs_ip.append(local.run(png, args.tokens))
                runs_sv.append(server.run(png, args.tokens))
                print(f"bench.serve: run {i + 1}/{args.repeats}: in-process ttft {runs_ip[-1]['first']['ttft']:.3f}s "
                      f"server {runs_sv[-1]['first']['ttft']:.3f}s", flush=True)
            local.model.close()
        finally:
            server.close()
    same = all((a[k]["text"], a[k]["tokens"]) == (b[k]["text"], b[k]["tokens"])
               for a, b in zip(runs_ip, runs_sv) for k in ("first", "follow_up"))
    shown = f"{manifest.name} ({_shown(bundle)}, {manifest.llm.default}, vision {manifest.vision.default})"
    res = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "model": shown,
           "repeats": args.repeats, "threads": args.threads, "tokens": args.tokens,
           "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                      f"Python {platform.python_version()}",
           "load_before": ", ".join(f"{x:.1f}" for x in load_before),
           "load_after": ", ".join(f"{x:.1f}" for x in os.getloadavg()),
           "server_cached_tokens": [r["follow_up"]["cached_tokens"] for r in runs_sv], "same_answers": same,
           "in_process": runs_ip, "server": runs_sv}
    section = render(res)
    print(section)
    if not args.no_report:
        write_section(args.report, section)
        print(f"bench.serve: wrote its section of {args.report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
