"""Offline for real: every user-facing command runs in a subprocess that cannot reach the network unnoticed, and
writes nothing under $HOME outside llava-local's own directory.

How it cannot pass by accident:
- a `sitecustomize.py` on PYTHONPATH installs an audit hook (PEP 578) in the child before any project code runs. It
  logs to a file, then raises, on every name lookup (`socket.getaddrinfo`, `gethostbyname*`, `gethostbyaddr`,
  `getnameinfo`), every `connect`/`sendto` to anything but loopback or a Unix socket, every `urllib` request to a
  non-loopback URL and every subprocess of a network tool (curl, wget, ssh, git, ...). The test reads the log, so
  an attempt that some library catches and swallows still fails the test. `test_the_guard_itself_bites` proves the
  hook is installed and logs (a guard that silently failed to load would make every other test pass).
- native code (onnxruntime's C++ telemetry uploader) bypasses Python's audit hooks, so HOME is a fresh empty
  directory (XDG variables unset, so every library falls back to ~/.cache, ~/.config, ~/.local) with
  LLAVA_LOCAL_HOME inside it, and after each command every file under HOME must lie inside LLAVA_LOCAL_HOME.
  onnxruntime's 1DS telemetry writes ~/.cache/Microsoft/DeveloperTools/.onnxruntime/{deviceid,onnxruntime.db}
  before it uploads anything: without the ORT_DISABLE_TELEMETRY handling in llava_local/__init__.py the chat, TUI
  and convert cases fail here (checked by hand, docs/reliability.md).
- the child's environment is built from scratch: ORT_DISABLE_TELEMETRY (which this test process has, from the
  package import in tests/conftest.py) and every cache-location variable are absent.

Adding a command: add an entry to `COMMANDS` below; the fixtures it needs are requested by name.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

AUDIT_HOOK = r'''
import json, os, sys

_LOG = os.environ.get("OFFLINE_AUDIT_LOG")
_LOOPBACK = ("127.", "::1", "localhost", "0:0:0:0:0:0:0:1")
_NET_TOOLS = {"curl", "wget", "nc", "ncat", "netcat", "ssh", "scp", "sftp", "rsync", "git", "ping", "nslookup",
              "dig", "host", "ftp", "telnet", "http", "aria2c"}


def _local(host):
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    return isinstance(host, str) and (host == "" or host.startswith(_LOOPBACK))


def _blocked(event, what):
    if _LOG:
        with open(_LOG, "a") as f:
            f.write(json.dumps({"event": event, "what": repr(what)[:300], "pid": os.getpid()}) + "\n")
    raise RuntimeError(f"offline test: {event} {what!r} blocked")


def _hook(event, args):
    if event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex", "socket.gethostbyaddr"):
        if not _local(args[0]):
            _blocked(event, args[0])
    elif event == "socket.getnameinfo":
        if not (isinstance(args[0], tuple) and _local(args[0][0])):
            _blocked(event, args[0])
    elif event in ("socket.connect", "socket.sendto"):
        address = args[1]
        if isinstance(address, tuple) and not _local(address[0]):  # AF_UNIX addresses are str/bytes: allowed
            _blocked(event, address)
    elif event == "urllib.Request":
        url = str(args[0])
        host = url.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1].split(":", 1)[0].strip("[]")
        if not url.startswith("file:") and not _local(host):
            _blocked(event, url)
    elif event == "subprocess.Popen":
        argv = args[1]
        first = argv[0] if isinstance(argv, (list, tuple)) and argv else argv
        name = os.path.basename(os.fsdecode(first)).split()[0] if first else ""
        if name in _NET_TOOLS:
            _blocked(event, argv)


sys.addaudithook(_hook)
if _LOG:
    with open(_LOG + ".installed", "a") as f:
        f.write(f"{os.getpid()}\n")
'''

# Variables that move where libraries write (or that would pre-disable what the test must see enabled).
_DROP = ("ORT_DISABLE_TELEMETRY", "HF_HOME", "HF_HUB_CACHE", "HF_DATASETS_CACHE", "TRANSFORMERS_CACHE",
         "TORCH_HOME", "MPLCONFIGDIR", "LLAVA_LOCAL_MODEL", "PYTHONSTARTUP", "PYTHONUSERBASE")


class Sandbox:
    """A fresh HOME with LLAVA_LOCAL_HOME inside, an audit-hooked Python, and the checks after each command."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.llava_home = self.home / "llava-local-home"
        self.hook_dir = root / "hook"
        self.log = root / "audit.log"
        self.home.mkdir()
        self.hook_dir.mkdir()
        (self.hook_dir / "sitecustomize.py").write_text(AUDIT_HOOK)
        env = {k: v for k, v in os.environ.items()
               if k not in _DROP and not k.startswith(("XDG_", "LLAVA_LOCAL_", "PYTHON"))}
        env.update(HOME=str(self.home), LLAVA_LOCAL_HOME=str(self.llava_home), LLAVA_LOCAL_THREADS="1",
                   OFFLINE_AUDIT_LOG=str(self.log), PYTHONPATH=os.pathsep.join([str(self.hook_dir), str(REPO)]),
                   TERM="dumb", PYTHONNOUSERSITE="1")
        self.env = env

    def run(self, argv: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
        before = self.outside_files()
        r = subprocess.run(argv, env=self.env, cwd=self.root, capture_output=True, text=True, timeout=timeout)
        after = self.outside_files()
        attempts = self.log.read_text().splitlines() if self.log.exists() else []
        assert (self.hook_dir / "sitecustomize.py").exists() and Path(f"{self.log}.installed").exists(), \
            "the audit hook did not load in the child"
        assert not attempts, "network access attempted:\n" + "\n".join(attempts)
        assert after == before, f"written under $HOME outside LLAVA_LOCAL_HOME: {sorted(after - before)}"
        return r

    def outside_files(self) -> set[str]:
        """Every file and directory under HOME that is not inside LLAVA_LOCAL_HOME."""
        found = set()
        for dirpath, dirnames, filenames in os.walk(self.home):
            d = Path(dirpath)
            if d == self.llava_home or self.llava_home in d.parents:
                dirnames[:] = []
                continue
            found.update(str((d / n).relative_to(self.home)) for n in dirnames + filenames
                         if d / n != self.llava_home)
        return found


TUI_SCRIPT = r'''
import asyncio, sys, time

from llava_local.config import GenerationConfig, RuntimeConfig
from llava_local.paths import data_dir
from tui.app import LlavaApp
from tui.backend import llava_backend
from tui.store import Store
from tui.widgets.prompt import PromptInput


async def wait(pilot, cond, what):
    deadline = time.monotonic() + 120
    while not cond():
        assert time.monotonic() < deadline, what
        await pilot.pause(0.05)


async def main():
    store = Store(data_dir())
    app = LlavaApp(llava_backend(RuntimeConfig(device="cpu", n_threads=1)), store, model=sys.argv[1],
                   images=[sys.argv[2]], generation=GenerationConfig(temperature=0, max_tokens=4), preview="none")
    async with app.run_test(size=(100, 30)) as pilot:
        await wait(pilot, lambda: app.session is not None, "model open")
        app.query_one(PromptInput).text = "What is in this image?"
        await pilot.press("enter")
        await wait(pilot, lambda: len(app.history) >= 2 and not app.busy, "answer")
        await pilot.press("ctrl+s")  # save: the sessions database is written
        await pilot.pause(0.2)
    store.close()
    print("TUI-ANSWER", app.history[-1].role, len(app.history))


asyncio.run(main())
'''


def _chat(sb: Sandbox, fx: Callable[[str], object]) -> list[str]:
    image = fx("rt_images")[0]
    return [sys.executable, "-m", "llava_local", "chat", str(image), "--model", str(fx("rt_bundle")),
            "--prompt", "What is in this image?", "--max-tokens", "4", "--device", "cpu"]


def _tui(sb: Sandbox, fx: Callable[[str], object]) -> list[str]:
    script = sb.root / "tui_headless.py"
    script.write_text(TUI_SCRIPT)
    return [sys.executable, str(script), str(fx("rt_bundle")), str(fx("rt_images")[0])]


def _convert(sb: Sandbox, fx: Callable[[str], object]) -> list[str]:
    return [sys.executable, "-m", "llava_local", "convert", str(fx("tiny_hf_checkpoint")), "-o",
            str(sb.root / "bundle"), "--quant", "f16", "--vision-dtype", "fp32", "--quiet"]


def _data_generate(sb: Sandbox, fx: Callable[[str], object]) -> list[str]:
    sys.path.insert(0, str(REPO / "tests" / "datagen"))
    from datagen_fixtures import build_tiny_gguf, make_coco

    gguf_dir = sb.root / "gguf"
    gguf_dir.mkdir()
    gguf = build_tiny_gguf(gguf_dir)
    cap, inst = make_coco(sb.root / "coco", tags=("good",))
    return [sys.executable, "-m", "llava_local", "data", "generate", "--input", str(cap), str(inst),
            "-o", str(sb.root / "out.json"), "--per-image", "1", "--backend", "llama", "--model", str(gguf),
            "--shots", "1", "--n-ctx", "2048", "--max-tokens", "40", "--quiet"]


def _import(sb: Sandbox, fx: Callable[[str], object]) -> list[str]:
    """An LM Studio-style folder (LLM GGUF + mmproj) made by the real exporter, outside the sandbox, then imported."""
    from converters.export_llamacpp import ExportOptions, export

    folder = sb.root / "lmstudio" / "tiny"
    export(ExportOptions(src=Path(str(fx("tiny_bundle"))), out=folder, quant="f16"))
    for extra in ("Modelfile", "export.json"):
        (folder / extra).unlink(missing_ok=True)
    return [sys.executable, "-m", "llava_local", "import", str(folder), "-o", str(sb.root / "imported"), "--quiet"]


# name → builder of the command line (fixtures by name through `fx`) and what its stdout must contain.
COMMANDS: dict[str, tuple[Callable[[Sandbox, Callable[[str], object]], list[str]], str]] = {
    "chat": (_chat, ""),
    "tui": (_tui, "TUI-ANSWER assistant 2"),
    "convert": (_convert, ""),
    "data-generate": (_data_generate, ""),
    "import": (_import, ""),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_command_is_offline(name, request, tmp_path):
    sb = Sandbox(tmp_path)
    build, expect = COMMANDS[name]
    r = sb.run(build(sb, request.getfixturevalue))
    assert r.returncode == 0, r.stderr[-3000:]
    assert expect in r.stdout
    # it really ran: llava-local's own directory got what the command writes (cache, sessions, nothing else)
    if name in ("chat", "tui"):
        assert any((sb.llava_home / "cache" / "embeddings").rglob("*.npy")), "the image was never encoded"
    if name == "tui":
        assert (sb.llava_home / "data").is_dir()
    if name == "convert":
        assert json.loads((sb.root / "bundle" / "manifest.json").read_text())["parity"]
    if name == "data-generate":
        assert (sb.root / "out.stats.json").is_file()
    if name == "import":
        assert json.loads((sb.root / "imported" / "manifest.json").read_text())["parity"]


def test_the_guard_itself_bites(tmp_path):
    """The hook loads in the child, logs and raises on a lookup, a connect and a URL; loopback is allowed; and a
    write under HOME outside LLAVA_LOCAL_HOME is seen. Without this, a broken guard would pass everything."""
    sb = Sandbox(tmp_path)
    probe = r'''
import os, socket, subprocess, urllib.request
from pathlib import Path
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
c = socket.socket(); c.connect(("127.0.0.1", srv.getsockname()[1])); c.close(); srv.close()  # loopback: fine
socket.getaddrinfo("localhost", 80)
for attempt in (lambda: socket.getaddrinfo("mobile.events.data.microsoft.com", 443),
                lambda: socket.socket().connect(("192.0.2.1", 443)),
                lambda: urllib.request.urlopen("https://example.com/", timeout=0.1),
                lambda: subprocess.run(["curl", "https://example.com/"])):
    try:
        attempt()
    except Exception:
        pass  # swallowed, as a library might: the log must still have it
Path(os.environ["HOME"], ".cache", "someone-else").mkdir(parents=True)
'''
    with pytest.raises(AssertionError, match="network access attempted") as err:
        sb.run([sys.executable, "-c", probe], timeout=60)
    log = [json.loads(line) for line in sb.log.read_text().splitlines()]
    assert {e["event"] for e in log} == {"socket.getaddrinfo", "socket.connect", "urllib.Request", "subprocess.Popen"}
    assert "mobile.events.data.microsoft.com" in str(err.value)
    sb.log.unlink()
    with pytest.raises(AssertionError, match="outside LLAVA_LOCAL_HOME"):
        sb.run([sys.executable, "-c", "import os, pathlib; pathlib.Path(os.environ['HOME'], '.cache', 'x').touch()"],
               timeout=60)
