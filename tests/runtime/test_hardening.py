"""Hostile or unlucky input to the runtime and the CLI's edges: non-finite knobs, absurd contexts, one-shot flags
that would be ignored, a foreign cpu-probe cache, Ctrl-C during onnxruntime's import, closed and full standard
streams, and exit codes under real signals (real subprocesses, real signals, the tiny random bundle)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from llava_local import cpuprobe
from llava_local.cli import main
from llava_local.config import GenerationConfig, RuntimeConfig
from llava_local.errors import UsageError

REPO = Path(__file__).resolve().parents[2]


def _env(home: Path) -> dict[str, str]:
    env = {**os.environ, "LLAVA_LOCAL_HOME": str(home), "LLAVA_LOCAL_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("LLAVA_LOCAL_DEBUG", None)
    return env


def _sh(script: str, home: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a shell line (for redirections Python's subprocess cannot express, like `>&-`)."""
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=_env(home), cwd=REPO,
                          timeout=timeout)


CLI = f"{sys.executable} -m llava_local.cli"


def _default_signals() -> None:
    """In the child, before exec: SIGINT and SIGTERM as a terminal gives them. A test run started in the background of a
    script (`make test &`, nohup) ignores SIGINT, and an ignored signal stays ignored across exec, so the signal tests
    would test nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


# -- validation -----------------------------------------------------------------------------------------------

FLOAT_FIELDS = [n for n, f in GenerationConfig.__dataclass_fields__.items() if f.type == "float"]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("name", FLOAT_FIELDS)
def test_every_float_knob_rejects_non_finite_values(name, value):
    with pytest.raises(UsageError, match=name):
        GenerationConfig(**{name: value})


@pytest.mark.parametrize("settings", [{"temperature": "hot"}, {"top_k": 1.5}, {"max_tokens": True},
                                      {"seed": None}])
def test_stored_settings_of_the_wrong_type_are_usage_errors(settings):
    with pytest.raises(UsageError):
        GenerationConfig.from_dict(settings)


@pytest.mark.parametrize("flags,match", [
    (["--temperature", "nan"], "temperature must be a finite number"),
    (["--repeat-penalty", "nan"], "repeat_penalty must be a finite number"),
    (["--top-p", "inf"], "top_p"),
    (["--n-ctx", "100000000"], "--n-ctx must be between 1 and"),
    (["--n-ctx", "4096"], "more than this model was trained for; use at most 512"),
    (["--session", "1"], "--session resumes a conversation in the terminal app"),
])
def test_one_shot_refuses_values_it_would_misuse(capsys, rt_bundle, rt_images, flags, match):
    code = main(["chat", str(rt_images[0]), "--model", str(rt_bundle), "--prompt", "q", *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("llava-local: error:") and len(err.splitlines()) == 1, err
    assert match in err


def test_n_ctx_ceiling_is_checked_before_any_bundle_is_read():
    with pytest.raises(UsageError, match="--n-ctx"):
        RuntimeConfig(n_ctx=100_000_000)
    assert RuntimeConfig(n_ctx=2048).n_ctx == 2048


# -- the cpu-probe cache --------------------------------------------------------------------------------------


@pytest.mark.parametrize("content", ["[1, 2]", '"a string"', "3", "null"])
def test_cpu_probe_cache_that_is_not_an_object_is_rewritten(rt_bundle, monkeypatch, content):
    """Valid JSON that is not an object made every chat on an AMX machine crash with a TypeError."""
    from llava_local.paths import cache_dir

    monkeypatch.setattr(cpuprobe, "_cpu_flags", lambda: "fpu sse amx_tile")  # take the probing path on any CPU:
    monkeypatch.setattr(cpuprobe, "build_has_amx", lambda: True)  # an AMX CPU running an AMX build
    monkeypatch.delenv(cpuprobe.REPACK_ENV, raising=False)
    path = cache_dir() / "cpu-probe.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    ok = cpuprobe.extra_buffers_safe(rt_bundle / "llm-f32.gguf", "f32")  # a real probe of the tiny GGUF
    assert isinstance(ok, bool)
    known = json.loads(path.read_text())
    assert isinstance(known, dict) and list(known.values()) == [ok]


# -- Ctrl-C while onnxruntime loads ---------------------------------------------------------------------------

# onnxruntime's native module init converts an exception raised inside it (KeyboardInterrupt from a Ctrl-C landing
# while it imports numpy's C API) into a plain ImportError, "import numpy failed" without a cause or pybind11's
# "initialization failed". This stand-in package does the same around a wait, so a real SIGINT lands there every
# time (with numpy already imported the real window is a few milliseconds wide).
_FAKE_ORT = textwrap.dedent("""
    import sys, time
    print("loading", flush=True)
    try:
        time.sleep(60)
    except BaseException:
        raise ImportError("import numpy failed") from None
""")
_CALL_ORT = textwrap.dedent("""
    from llava_local.errors import EngineError
    from llava_local.vision import _ort
    try:
        _ort()
    except EngineError as e:
        print("engine-error:", e, flush=True)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
""")


def test_ctrl_c_while_onnxruntime_loads_is_an_interrupt(tmp_path):
    (tmp_path / "fake" / "onnxruntime").mkdir(parents=True)
    (tmp_path / "fake" / "onnxruntime" / "__init__.py").write_text(_FAKE_ORT)
    env = {**_env(tmp_path), "PYTHONPATH": f"{tmp_path / 'fake'}{os.pathsep}{REPO}"}
    proc = subprocess.Popen([sys.executable, "-c", _CALL_ORT], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=REPO, preexec_fn=_default_signals)
    try:
        assert proc.stdout.readline().strip() == "loading"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert out.strip() == "interrupted", (out, err)  # was: "engine-error: onnxruntime is not installed"


def test_a_broken_onnxruntime_is_not_called_missing(tmp_path):
    (tmp_path / "fake" / "onnxruntime").mkdir(parents=True)
    (tmp_path / "fake" / "onnxruntime" / "__init__.py").write_text("raise ImportError('libonnxruntime.so: missing')")
    env = {**_env(tmp_path), "PYTHONPATH": f"{tmp_path / 'fake'}{os.pathsep}{REPO}"}
    out = subprocess.run([sys.executable, "-c", _CALL_ORT], capture_output=True, text=True, env=env, cwd=REPO,
                         timeout=60).stdout
    assert "installed but does not load: libonnxruntime.so" in out, out


# -- closed and full standard streams -------------------------------------------------------------------------


def _one_line_error(r: subprocess.CompletedProcess, code: int, match: str) -> None:
    err = r.stderr.strip()
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr
    assert len(err.splitlines()) == 1 and err.startswith("llava-local: error:") and match in err, err


def test_closed_stdin_without_prompt(rt_bundle, tmp_path):
    _one_line_error(_sh(f"{CLI} chat --model {rt_bundle} <&-", tmp_path), 2, "stdin is closed")


def test_closed_stdout(rt_bundle, rt_images, tmp_path):
    r = _sh(f"{CLI} chat {rt_images[0]} --model {rt_bundle} --prompt hi >&-", tmp_path)
    _one_line_error(r, 1, "standard output: it is closed")


@pytest.mark.parametrize("args", ["chat {image} --model {bundle} --max-tokens 4 --prompt hi",
                                  "chat {image} --model {bundle} --json --prompt hi", "info {bundle}", "--help"])
def test_full_disk_on_stdout(rt_bundle, rt_images, tmp_path, args):
    if not Path("/dev/full").exists():
        pytest.fail("this test needs /dev/full (Linux)")
    r = _sh(f"{CLI} {args.format(image=rt_images[0], bundle=rt_bundle)} > /dev/full", tmp_path)
    _one_line_error(r, 1, "No space left on device")


def test_reader_gone_is_a_quiet_exit(rt_bundle, rt_images, tmp_path):
    """`| true`: the reader has exited before the answer is written (EPIPE): no message, exit 0, like other tools."""
    r = subprocess.run(["bash", "-c", f"{CLI} chat {rt_images[0]} --model {rt_bundle} --max-tokens 4 --prompt hi "
                        "| true; exit ${PIPESTATUS[0]}"], capture_output=True, text=True, env=_env(tmp_path),
                       cwd=REPO, timeout=120)
    assert r.returncode == 0 and r.stderr == "", (r.returncode, r.stderr)


def test_closed_stderr_still_exits_with_the_code(rt_bundle, tmp_path):
    r = _sh(f"{CLI} chat --model {rt_bundle} --prompt q --temperature nan 2>&-", tmp_path)
    assert r.returncode == 2 and r.stdout == ""


# -- exit codes under real signals ----------------------------------------------------------------------------


def _wait_blocked_on_stdin(proc: subprocess.Popen, timeout: float = 60) -> None:
    """Until the process sleeps in a read of its stdin pipe (it has imported everything and asked for the question)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        try:
            if "pipe_read" in Path(f"/proc/{proc.pid}/wchan").read_text():  # pipe_read, anon_pipe_read
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError("the chat never started reading its question")


@pytest.mark.parametrize("sig,code,word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_one_shot_signals_exit_codes(rt_bundle, tmp_path, sig, code, word):
    proc = subprocess.Popen([sys.executable, "-m", "llava_local.cli", "chat", "--model", str(rt_bundle)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(tmp_path), cwd=REPO, preexec_fn=_default_signals)
    try:
        _wait_blocked_on_stdin(proc)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, (proc.returncode, err)
    assert err.strip() == f"llava-local: {word}"


def test_success_error_and_usage_exit_codes(rt_bundle, rt_images, tmp_path):
    ok = _sh(f"{CLI} chat {rt_images[0]} --model {rt_bundle} --max-tokens 2 --prompt hi", tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert _sh(f"{CLI} chat --model {tmp_path / 'nothing'} --prompt hi", tmp_path).returncode == 1
    assert _sh(f"{CLI} chat --model {rt_bundle} --prompt hi --device tpu", tmp_path).returncode == 2


def test_manifest_promising_more_context_than_the_gguf_is_refused_before_allocating(capsys, rt_bundle, tmp_path):
    """A mismatched (or hostile) manifest: its context_length is the default --n-ctx, so the GGUF's own training
    context is checked before llama.cpp allocates the KV cache."""
    import shutil

    bundle = Path(shutil.copytree(rt_bundle, tmp_path / "b"))
    m = json.loads((bundle / "manifest.json").read_text())
    m["llm"]["context_length"] = 1_000_000
    (bundle / "manifest.json").write_text(json.dumps(m))
    code = main(["chat", "--model", str(bundle), "--prompt", "q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "was trained for; use at most 512" in err, err


def test_review_edge_cases_are_one_line(tmp_path):
    """An image name too long for the filesystem is an ImageError, not an OSError traceback; a penalties window past
    int32 is a usage error (llama.cpp allocates a ring of that many tokens); a model name with escapes is refused."""
    import json as _json

    from llava_local.config import GenerationConfig
    from llava_local.errors import BundleError, ImageError, UsageError
    from llava_local.manifest import Manifest
    from llava_local.session import check_image_file

    with pytest.raises(ImageError, match="cannot read image"):
        check_image_file("x" * 5000)
    with pytest.raises(UsageError, match="repeat_last_n must be between"):
        GenerationConfig(repeat_last_n=2**31)
    d = _json.loads((REPO / "models" / "llava-local-tiny" / "manifest.json").read_text())
    d["name"] = "evil\x1b]0;owned\x07"
    with pytest.raises(BundleError, match="model name must be one printable line"):
        Manifest.from_dict(d)
