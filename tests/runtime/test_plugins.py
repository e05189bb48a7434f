"""Commands are plugins: `llava-local --help` lists what the installed distributions register, and a command whose
extra is missing says which extra to install. A throwaway distribution (a real `*.dist-info` with METADATA and
entry_points.txt on PYTHONPATH, found by importlib.metadata like any installed package) registers commands whose
requirement does not exist."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# What this repository registers (pyproject.toml); a command that disappears from --help fails here.
SHIPPED = ("chat", "convert", "data", "eval", "export", "import", "info", "serve", "train")


def _cli(*args: str, path: Path | None = None, home: Path) -> subprocess.CompletedProcess:
    pythonpath = os.pathsep.join(str(p) for p in (path, REPO) if p is not None)
    env = {**os.environ, "LLAVA_LOCAL_HOME": str(home), "PYTHONPATH": pythonpath}
    return subprocess.run([sys.executable, "-m", "llava_local.cli", *args], capture_output=True, text=True, env=env,
                          cwd=home.parent, timeout=60)


def test_help_lists_every_registered_command(tmp_path):
    r = _cli("--help", home=tmp_path / "home")
    assert r.returncode == 0, r.stderr
    listed = [line.split()[0] for line in r.stdout.split("COMMAND", 2)[-1].splitlines()
              if line.startswith("    ") and line.split()]
    assert set(SHIPPED) <= set(listed), listed
    assert "unavailable" not in r.stdout  # every extra is installed in the test environment


def _fake_distribution(root: Path) -> Path:
    info = root / "fakeplug-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: fakeplug\nVersion: 1.0\nProvides-Extra: vision\n"
        'Requires-Dist: not-a-real-package-xyz ; extra == "vision"\n')
    (info / "entry_points.txt").write_text(
        "[llava_local.commands]\nneedy = fakeplug_needy [vision]\ndeclared = fakeplug_declared\n"
        "late = fakeplug_late\n")
    body = ("HELP = {help!r}\n{extra}\ndef add_arguments(parser):\n    pass\n\n"
            "def run(args):\n    {run}\n    return 0\n")
    (root / "fakeplug_needy.py").write_text(body.format(help="needs vision", extra="", run="print('ran')"))
    (root / "fakeplug_declared.py").write_text(
        body.format(help="declares its extra", extra="EXTRA = 'vision'", run="print('ran')"))
    (root / "fakeplug_late.py").write_text(
        body.format(help="imports lazily", extra="", run="import not_a_real_package_xyz  # noqa"))
    return root


def test_a_command_whose_extra_is_missing_says_which_extra_to_install(tmp_path):
    plug = _fake_distribution(tmp_path / "site")
    home = tmp_path / "home"
    for name in ("needy", "declared"):  # extra from the entry point's [extra], or from the module's EXTRA
        r = _cli(name, path=plug, home=home)
        assert r.returncode == 1, (name, r.stdout, r.stderr)
        assert r.stderr == (f"llava-local: error: `{name}` needs the [vision] extra (missing: not-a-real-package-xyz): "
                            "pip install 'fakeplug[vision]'\n"), r.stderr
        assert "ran" not in r.stdout
    r = _cli("late", path=plug, home=home)  # no extra declared: the missing module is traced to its extra
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr == "llava-local: error: `late` needs not_a_real_package_xyz: pip install 'fakeplug[vision]'\n"
    r = _cli("--help", path=plug, home=home)  # listed all the same, with what to install
    assert r.returncode == 0, r.stderr
    line = " ".join(r.stdout.split("    needy", 1)[1].split("\n    ", 1)[0].split())  # argparse wraps help lines
    assert line == "needs vision (unavailable: pip install 'fakeplug[vision]')", line
    assert all(f"    {name}" in r.stdout for name in SHIPPED)  # the shipped commands are still there
