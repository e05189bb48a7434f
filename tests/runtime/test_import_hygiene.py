"""`llava_local` must never import torch, transformers, onnx, textual or the packages built on it (tui, converters,
training, serve), not even lazily and not even by name.

Three checks: every module under `llava_local/` is read statically (each `import`, wherever it stands, and every
`importlib.import_module("...")`/`__import__("...")` with a literal name, and any string naming one of those
packages' modules); a clean subprocess imports the package and the CLI and runs a whole one-shot chat; and the same
CLI runs the terminal app in a real pty, where only the registered front-end may bring in tui and textual.
"""

from __future__ import annotations

import ast
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUNTIME = REPO / "llava_local"
HEAVY = ("torch", "transformers", "onnx", "onnxscript", "textual")
BUILT_ON_IT = ("tui", "converters", "training", "serve")
FORBIDDEN = HEAVY + BUILT_ON_IT
# a string that is a dotted module path inside one of the packages built on the runtime, e.g. "converters.cli"
_MODULE_PATH = re.compile(rf"^({'|'.join(BUILT_ON_IT)})(\.[A-Za-z_]\w*)+(:\w+)?$")


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, imported module) for every import statement and literal dynamic import in `tree`."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else ""
            if name in ("import_module", "__import__", "find_spec") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def _module_path_strings(tree: ast.AST) -> list[tuple[int, str]]:
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and _MODULE_PATH.match(n.value)]


def test_no_runtime_module_imports_a_forbidden_package():
    files = sorted(RUNTIME.rglob("*.py"))
    assert len(files) > 20  # the walk really covers the package
    bad = []
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for line, module in _imports(tree):
            if module.split(".")[0] in FORBIDDEN:
                bad.append(f"{path.relative_to(REPO)}:{line} imports {module}")
        for line, text in _module_path_strings(tree):
            bad.append(f"{path.relative_to(REPO)}:{line} names {text!r}")
    assert not bad, "\n".join(bad)


def test_the_static_check_sees_lazy_and_dynamic_imports():
    """The walker itself: an import inside a function and a literal import_module count (so the test can fail)."""
    tree = ast.parse("def f():\n    import torch.nn\n    importlib.import_module('tui.app')\n"
                     "    from converters import cli\nX = 'training.cli'\n")
    assert {m for _, m in _imports(tree)} == {"torch.nn", "tui.app", "converters"}
    assert sorted(s for _, s in _module_path_strings(tree)) == ["training.cli", "tui.app"]


SCRIPT = """
import sys
import llava_local, llava_local.cli
from llava_local import open_model, ChatSession, GenerationConfig, RuntimeConfig
stage1 = sorted({m.split('.')[0] for m in sys.modules})
code = llava_local.cli.main(["chat", sys.argv[1], "--model", sys.argv[2], "--prompt", "Hi", "--max-tokens", "3"])
assert code == 0, code
code = llava_local.cli.main(["info", sys.argv[2]])
assert code == 0, code
stage2 = sorted({m.split('.')[0] for m in sys.modules})
print("STAGE1", " ".join(stage1))
print("STAGE2", " ".join(stage2))
"""


def test_runtime_imports_no_heavy_frameworks(rt_bundle, rt_images, tmp_path):
    env = {**os.environ, "LLAVA_LOCAL_HOME": str(tmp_path), "LLAVA_LOCAL_THREADS": "1", "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(rt_images[0]), str(rt_bundle)], capture_output=True,
                       text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = dict(line.split(" ", 1) for line in r.stdout.splitlines() if line.startswith("STAGE"))
    light, used = set(lines["STAGE1"].split()), set(lines["STAGE2"].split())
    assert not light & set(FORBIDDEN), light & set(FORBIDDEN)
    assert not used & set(FORBIDDEN), used & set(FORBIDDEN)
    assert "llama_cpp" not in light and "onnxruntime" not in light  # import llava_local stays cheap
    assert {"llama_cpp", "onnxruntime"} <= used  # and the chat really ran on them


HELP_SCRIPT = """
import sys
import llava_local.cli
try:
    llava_local.cli.main(["--help"])
except SystemExit:
    pass
print("MODULES", " ".join(sorted({m.split('.')[0] for m in sys.modules})))
"""


def test_help_lists_every_command_without_heavy_imports(tmp_path):
    env = {**os.environ, "LLAVA_LOCAL_HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", HELP_SCRIPT], capture_output=True, text=True, env=env, cwd=tmp_path,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    modules = set(r.stdout.rsplit("MODULES", 1)[1].split())
    assert not modules & set(HEAVY), modules & set(HEAVY)


TUI_SCRIPT = """
import atexit, sys
out = sys.argv.pop(1)
atexit.register(lambda: open(out, "w").write(" ".join(sorted({m.split('.')[0] for m in sys.modules}))))
import llava_local.cli
sys.exit(llava_local.cli.main(sys.argv[1:]))
"""


def test_terminal_app_mode_loads_the_frontend_and_nothing_heavy(rt_bundle, rt_images, tmp_path):
    """`llava-local chat` on a terminal runs the registered front-end; even then no torch/onnx/converters."""
    import fcntl
    import struct
    import termios

    out = tmp_path / "modules.txt"
    env = {**os.environ, "LLAVA_LOCAL_HOME": str(tmp_path / "home"), "LLAVA_LOCAL_THREADS": "1",
           "PYTHONPATH": str(REPO), "TERM": "xterm-256color"}
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    proc = subprocess.Popen([sys.executable, "-c", TUI_SCRIPT, str(out), "chat", "--model", str(rt_bundle),
                             str(rt_images[0])], stdin=slave, stdout=slave, stderr=slave, env=env, cwd=tmp_path,
                            start_new_session=True)
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 90
        while b"ready" not in seen and time.monotonic() < deadline:  # the status bar once the model is loaded
            if select.select([master], [], [], 0.5)[0]:
                try:
                    seen += os.read(master, 65536)
                except OSError:
                    break
        assert b"ready" in seen, seen[-400:]
        os.write(master, b"\x11")  # Ctrl+Q
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    modules = set(out.read_text().split())
    assert {"tui", "textual"} <= modules  # the terminal app really ran
    assert not modules & {"torch", "transformers", "onnx", "onnxscript", "converters", "training"}, modules
