"""`convert` never destroys what it was not asked to replace, and cleans up after itself.

- `--force` replaces only a previous bundle (or an empty dir); an output that is, contains or sits inside the
  source is refused, with or without `--force`.
- A damaged weight file is one line naming it, not a library traceback.
- SIGTERM removes the work dir (the CLI turns it into an exception, so the cleanup runs) and exits 143; work dirs
  left by a kill -9 are removed by the next convert once their owner is gone.
- The bundle directory's mode follows the umask (mkdtemp's 0700 was kept before).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from converters import bundle as bundle_mod
from llava_local.cli import main
from llava_local.manifest import load_manifest

REPO = Path(__file__).resolve().parents[2]
FAST = ["--quant", "f16", "--no-verify", "--no-fuse-vision", "--quiet"]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def src(tiny_hf_checkpoint: Path, tmp_path: Path) -> Path:
    """A private copy of the checkpoint: the session fixture must survive a regression of this very bug."""
    return Path(shutil.copytree(tiny_hf_checkpoint, tmp_path / "work" / "ckpt"))


@pytest.mark.parametrize("where", ["the-source", "inside", "parent-as-dot"])
def test_output_overlapping_the_source_is_refused_even_with_force(src, tmp_path, monkeypatch, capsys, where):
    before = _tree(src.parent)
    out = {"the-source": str(src), "inside": str(src / "bundle"), "parent-as-dot": "."}[where]
    monkeypatch.chdir(src.parent)
    assert main(["convert", str(src), "-o", out, *FAST, "--force"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the source" in err and "choose an -o outside it" in err, err
    assert _tree(src.parent) == before  # not one file touched


def test_force_never_deletes_a_directory_that_is_not_a_bundle(src, tmp_path, capsys):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"precious")
    assert main(["convert", str(src), "-o", str(out), *FAST, "--force"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a bundle (no manifest.json)" in err and "--force only replaces" in err
    assert (out / "holiday.jpg").read_bytes() == b"precious"


def test_force_replaces_a_previous_bundle_and_the_mode_follows_the_umask(src, tmp_path, capsys):
    out = tmp_path / "b"
    old = os.umask(0o027)
    try:
        assert main(["convert", str(src), "-o", str(out), *FAST]) == 0
        (out / "stale.gguf").write_bytes(b"old")
        assert main(["convert", str(src), "-o", str(out), *FAST, "--force"]) == 0
    finally:
        os.umask(old)
    assert not (out / "stale.gguf").exists() and load_manifest(out).llm.files == {"f16": "llm-f16.gguf"}
    assert out.stat().st_mode & 0o777 == 0o750  # mkdtemp's 0700 before
    assert sorted(p.name for p in out.iterdir()) == ["llm-f16.gguf", "manifest.json", "vision.onnx"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("damage", ["garbage", "truncated", "bin-garbage"])
def test_damaged_weights_are_one_line(src, tmp_path, capsys, damage):
    st = src / "model.safetensors"
    if damage == "garbage":
        st.write_bytes(b"\x00" * 7 + b"not safetensors at all")
    elif damage == "truncated":
        st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    else:
        st.unlink()
        (src / "pytorch_model.bin").write_bytes(b"PK\x03\x04 this is no zip")
    rc = main(["convert", str(src), "-o", str(tmp_path / "out"), *FAST])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("llava-local: error: ") and ("model.safetensors" in err or "pytorch_model.bin" in err)
    assert "not a readable" in err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_work_dirs_of_dead_converts_are_removed(src, tmp_path, capsys):
    """Left by kill -9 (or a power cut): the next convert into the same place removes what can never finish."""
    parent = tmp_path / "models"
    parent.mkdir()
    host = os.uname().nodename

    def partial(name: str, owner: dict | None, age_s: float = 0) -> Path:
        d = parent / f".b.partial-{name}"
        d.mkdir()
        (d / "llm-f16.gguf").write_bytes(b"half written")
        if owner is not None:
            (d / bundle_mod.OWNER_FILE).write_text(json.dumps(owner))
        if age_s:
            t = time.time() - age_s
            os.utime(d, (t, t))
        return d

    dead = partial("dead", {"pid": _dead_pid(), "host": host, "started": 0})
    alive = partial("alive", {"pid": os.getpid(), "host": host, "boot": bundle_mod._boot_id(), "started": 0})
    before_reboot = partial("rebooted", {"pid": os.getpid(), "host": host, "boot": "another-boot", "started": 0})
    elsewhere = partial("other-host", {"pid": _dead_pid(), "host": "not-" + host, "started": 0})
    old = partial("old", None, age_s=3 * 24 * 3600)
    fresh = partial("fresh", None)
    target = tmp_path / "keep"
    target.mkdir()
    (target / "x").write_text("x")
    link = parent / ".b.partial-link"
    link.symlink_to(target, target_is_directory=True)
    (src / "model.safetensors").write_bytes(b"broken")  # the convert itself fails early: cleaning comes first
    assert main(["convert", str(src), "-o", str(parent / "b"), *FAST]) == 1
    capsys.readouterr()
    assert not dead.exists() and not old.exists() and not before_reboot.exists()
    assert alive.exists() and elsewhere.exists() and fresh.exists() and link.is_symlink()
    assert (target / "x").read_text() == "x"


def test_sigterm_removes_the_work_dir_and_exits_143(src, tmp_path):
    out = tmp_path / "models" / "b"
    env = {**os.environ, "LLAVA_LOCAL_HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO),
           "LLAVA_LOCAL_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "llava_local.cli", "convert", str(src), "-o", str(out),
                             "--quant", "f16", "--no-verify"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while not list(out.parent.glob(".b.partial-*")):  # the work dir exists: the convert is under way
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "llava-local: terminated" and "Traceback" not in err
    assert list(out.parent.iterdir()) == []  # neither the bundle nor the hidden work dir
