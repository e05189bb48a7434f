"""`llava-local chat` / `info` end to end: a real subprocess on a real bundle, streamed output equal to the in-process
greedy answer, stdin questions, the on-disk embedding cache across processes, and every user mistake ending in one
line on stderr with a non-zero exit and no traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llava_local import ChatSession, GenerationConfig, RuntimeConfig, open_model
from llava_local.cli import main

REPO = Path(__file__).resolve().parents[2]
GREEDY = ["--temperature", "0", "--max-tokens", "16"]


@pytest.fixture
def bundle(request, rt_bundle):
    """The shared converter-built `tiny_bundle` when tests/conftest.py provides it, else this package's own."""
    try:
        return Path(request.getfixturevalue("tiny_bundle"))
    except pytest.FixtureLookupError:
        return rt_bundle


def _cli(*args: str, stdin: str | None = None, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "LLAVA_LOCAL_HOME": str(home), "LLAVA_LOCAL_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("LLAVA_LOCAL_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "llava_local.cli", *args], input=stdin if stdin is not None else "",
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


def _in_process_answer(bundle: Path, image: Path, question: str) -> str:
    with open_model(bundle, RuntimeConfig(device="cpu", n_threads=1)) as m:
        s = ChatSession(m, GenerationConfig(temperature=0, max_tokens=16))
        return list(s.ask(question, images=[image]))[-1].text


def test_one_shot_subprocess_streams_the_greedy_answer(bundle, rt_images, _rt_home):
    image = rt_images[0]
    expected = _in_process_answer(bundle, image, "What is in the image?")
    r = _cli("chat", str(image), "--model", str(bundle), "--prompt", "What is in the image?", *GREEDY, home=_rt_home)
    assert r.returncode == 0, r.stderr
    assert r.stdout == expected + "\n"
    assert r.stderr == ""  # llama.cpp and ONNX Runtime stay quiet
    # the question may come from stdin when stdin is not a terminal
    r2 = _cli("chat", str(image), "--model", str(bundle), *GREEDY, stdin="What is in the image?\n", home=_rt_home)
    assert (r2.returncode, r2.stdout) == (0, expected + "\n")


def test_json_and_embedding_cache_across_processes(bundle, rt_images, _rt_home):
    args = ("chat", str(rt_images[1]), "--model", str(bundle), "--prompt", "Describe it.", "--json", *GREEDY)
    first = _cli(*args, home=_rt_home)
    second = _cli(*args, home=_rt_home)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    a, b = json.loads(first.stdout), json.loads(second.stdout)
    assert a["images"][0]["cached"] is False and b["images"][0]["cached"] is True
    assert a["answer"] == b["answer"]
    assert a["n_generated"] >= 1 and a["llm_backend"] == "CPU" and a["context_max"] > 0
    assert list((_rt_home / "cache" / "embeddings").rglob("*.npy"))


def test_user_mistakes_subprocess_have_no_traceback(bundle, tmp_path, _rt_home):
    r = _cli("chat", str(tmp_path / "missing.png"), "--model", str(bundle), "--prompt", "x", home=_rt_home)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [f"llava-local: error: image not found: {tmp_path / 'missing.png'}"]
    r = _cli("info", str(tmp_path / "nothing"), home=_rt_home)
    assert r.returncode == 1 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def _err(capsys, argv) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize("make_args,match,code", [
    (lambda b, t: ["chat", str(t / "x.png"), "--model", str(b), "--prompt", "q"], "image not found", 1),
    (lambda b, t: ["chat", str(b / "manifest.json"), "--model", str(b), "--prompt", "q"], "not a readable image", 1),
    (lambda b, t: ["chat", "--model", str(t / "nob"), "--prompt", "q"], "model not found", 1),
    (lambda b, t: ["chat", "--model", "nosuchname", "--prompt", "q"], "unknown model 'nosuchname'", 1),
    (lambda b, t: ["chat", "--prompt", "q"], "no default model", 1),
    (lambda b, t: ["chat", "--model", str(b), "--prompt", "q", "--temperature", "-1"], "temperature", 2),
    (lambda b, t: ["chat", "--model", str(b), "--prompt", "q", "--top-p", "2"], "top_p", 2),
    (lambda b, t: ["chat", "--model", str(b), "--prompt", "   "], "empty", 2),
    (lambda b, t: ["chat", "--model", str(b), "--prompt", "q", "--quant", "q3_zz"], "--quant q3_zz: this bundle", 2),
    (lambda b, t: ["chat", "--model", str(b), "--prompt", "q", "--n-ctx", "0"], "--n-ctx", 2),
    (lambda b, t: ["chat", "--model", str(b / "manifest.json"), "--prompt", "q"], "is a file", 1),
    (lambda b, t: ["info", str(t)], "no manifest.json", 1),
])
def test_user_mistakes(capsys, bundle, tmp_path, make_args, match, code):
    got, err = _err(capsys, make_args(bundle, tmp_path))
    assert got == code
    assert len(err.splitlines()) == 1 and err.startswith("llava-local: error:") and match in err


def test_context_overflow_is_one_line(capsys, bundle, rt_images):
    code, err = _err(capsys, ["chat", str(rt_images[0]), "--model", str(bundle), "--n-ctx", "64",
                              "--prompt", "word " * 80])
    assert code == 1 and "context holds 64" in err and len(err.splitlines()) == 1


def test_bad_argparse_values_exit_2(capsys, bundle):
    with pytest.raises(SystemExit) as e:
        main(["chat", "--model", str(bundle), "--device", "tpu", "--prompt", "q"])
    assert e.value.code == 2


def test_info_text_json_verify(capsys, bundle, tmp_path):
    assert main(["info", str(bundle), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "files match their sha256" in out and "tokens x" in out
    assert main(["info", str(bundle), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["manifest"]["name"] and d["bundle"] == str(bundle)
    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    gguf = next(broken.glob("*.gguf"))
    data = bytearray(gguf.read_bytes())
    data[-1] ^= 0xFF
    gguf.write_bytes(bytes(data))
    code, err = _err(capsys, ["info", str(broken), "--verify"])
    assert code == 1 and "sha256" in err


def test_default_model_resolution_for_chat(capsys, bundle, rt_images, _rt_home, monkeypatch):
    target = _rt_home / "models" / "default"
    shutil.copytree(bundle, target)
    assert main(["chat", str(rt_images[0]), "--prompt", "Hi", *GREEDY]) == 0
    assert capsys.readouterr().out.endswith("\n")
    monkeypatch.setenv("LLAVA_LOCAL_MODEL", "default")
    assert main(["info"]) == 0
    assert str(target) in capsys.readouterr().out


def test_quantized_bundle_runs_in_a_subprocess(rt_bundle, rt_images, tmp_path, _rt_home):
    """A q4_0 GGUF made by llama.cpp's quantizer answers through the CLI. On VMs whose CPUs advertise AMX but fault
    on it, this would die with SIGILL unless the CPU probe turns llama.cpp's extra buffer types off."""
    import ctypes

    import llama_cpp

    from llava_local.cpuprobe import amx_possible
    from llava_local.manifest import file_entry

    b = tmp_path / "q"
    shutil.copytree(rt_bundle, b)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = 2  # LLAMA_FTYPE_MOSTLY_Q4_0
    params.nthread = 1
    assert llama_cpp.llama_model_quantize(str(b / "llm-f32.gguf").encode(), str(b / "llm-q4_0.gguf").encode(),
                                          ctypes.byref(params)) == 0
    d = json.loads((b / "manifest.json").read_text())
    d["llm"]["files"]["q4_0"] = "llm-q4_0.gguf"
    d["files"]["llm-q4_0.gguf"] = file_entry(b / "llm-q4_0.gguf")
    (b / "manifest.json").write_text(json.dumps(d))
    r = _cli("chat", str(rt_images[0]), "--model", str(b), "--quant", "q4_0", "--prompt", "Hi", "--json", *GREEDY,
             home=_rt_home)
    assert r.returncode == 0, (r.returncode, r.stderr)
    assert json.loads(r.stdout)["quant"] == "q4_0"
    probe = _rt_home / "cache" / "cpu-probe.json"
    assert probe.is_file() == amx_possible()


class _Tty:
    def __init__(self, tty: bool, text: str = "") -> None:
        self.tty, self.text = tty, text

    def isatty(self) -> bool:
        return self.tty

    def read(self) -> str:
        return self.text


def test_terminal_without_prompt_launches_the_tui(monkeypatch, bundle):
    import types

    seen = {}
    fake = types.ModuleType("tui")
    fake.launch = lambda args: seen.setdefault("args", args) and 7
    monkeypatch.setitem(sys.modules, "tui", fake)
    monkeypatch.setattr(sys, "stdin", _Tty(True))
    monkeypatch.setattr(sys, "stdout", _Tty(True))
    assert main(["chat", "a.png", "--model", str(bundle), "--session", "abc", "--temperature", "0.5"]) == 7
    args = seen["args"]
    assert (args.images, args.model, args.session, args.temperature, args.top_k) == (["a.png"], str(bundle), "abc",
                                                                                       0.5, None)
    for name in ("device", "quant", "n_ctx", "prompt", "json", "top_p", "repeat_penalty", "max_tokens", "seed",
                 "system"):
        assert hasattr(args, name)


def test_terminal_without_tui_is_one_line(monkeypatch, capsys, bundle):
    monkeypatch.setitem(sys.modules, "tui", None)  # `import tui` raises ImportError
    monkeypatch.setattr(sys, "stdin", _Tty(True))
    monkeypatch.setattr(sys, "stdout", _Tty(True))
    assert main(["chat", "--model", str(bundle)]) == 1
    assert "--prompt" in capsys.readouterr().err


def test_no_question_when_only_stdout_is_redirected(monkeypatch, capsys, bundle):
    monkeypatch.setattr(sys, "stdin", _Tty(True))
    code, err = _err(capsys, ["chat", "--model", str(bundle)])
    assert code == 2 and "no question" in err


def test_undecodable_stdin_is_one_line(bundle, _rt_home):
    env = {**os.environ, "LLAVA_LOCAL_HOME": str(_rt_home), "PYTHONPATH": str(REPO), "PYTHONIOENCODING": "utf-8"}
    r = subprocess.run([sys.executable, "-m", "llava_local.cli", "chat", "--model", str(bundle)],
                       input=b"\xff\xfe what?", capture_output=True, env=env, cwd=REPO, timeout=120)
    assert r.returncode == 2
    assert r.stderr.decode().strip().splitlines() == [
        "llava-local: error: the question on stdin is not valid text in the terminal's encoding (use UTF-8)"]
