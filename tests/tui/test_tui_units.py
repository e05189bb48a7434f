"""Small pure pieces of the TUI: path parsing, slash-command parsing and completion, export."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from llava_local.config import GenerationConfig
from llava_local.errors import ImageError, UsageError
from tui import commands
from tui.attach import check_image, pasted_images, split_paths
from tui.export import export_session, to_markdown
from tui.store import Message, Store


def test_split_paths_quotes_tilde_urls(tmp_path: Path, monkeypatch, red_png: Path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert split_paths("~/a.png 'b c.png' d\\ e.png") == [tmp_path / "a.png", Path("b c.png"), Path("d e.png")]
    assert split_paths("file:///tmp/x%20y.png") == [Path("/tmp/x y.png")]
    assert split_paths(str(red_png)) == [red_png]  # an unquoted path with a space that exists
    assert split_paths("'unbalanced.png") == [Path("unbalanced.png")]


def test_pasted_images_only_when_all_are_images(red_png: Path, blue_png: Path):
    assert pasted_images(f"'{red_png}'\n{blue_png}\n") == [red_png, blue_png]
    assert pasted_images(f"{red_png} and some words") == []
    assert pasted_images("hello world") == []


def test_check_image_messages(tmp_path: Path, red_png: Path):
    check_image(red_png)
    with pytest.raises(ImageError, match="image not found"):
        check_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="is a folder"):
        check_image(tmp_path)
    (tmp_path / "t.png").write_text("text")
    with pytest.raises(ImageError, match="not a readable image"):
        check_image(tmp_path / "t.png")


def test_parse_and_complete(tmp_path: Path, monkeypatch, red_png: Path):
    assert commands.parse("/image a.png b.png") == ("image", "a.png b.png")
    assert commands.parse("hello") is None and commands.parse("//etc is a dir") is None
    assert commands.prompt_text("//etc is a dir") == "/etc is a dir"
    with pytest.raises(UsageError, match="unknown command /imag .*did you mean /image"):
        commands.parse("/imag x")
    assert commands.complete("/he") == ["/help"]
    assert commands.complete("/set top") == ["/set top_p ", "/set top_k "]
    monkeypatch.chdir(red_png.parent)
    assert commands.complete("/image re") == ["/image red square.png"]
    assert commands.complete("hello") == []


def test_apply_set_validates():
    cfg = commands.apply_set(GenerationConfig(), "max_tokens 64")
    assert cfg.max_tokens == 64
    with pytest.raises(UsageError, match="not a int"):
        commands.apply_set(cfg, "max_tokens lots")
    with pytest.raises(UsageError, match="usage: /set"):
        commands.apply_set(cfg, "colour red")
    with pytest.raises(UsageError, match="top_p"):
        commands.apply_set(cfg, "top_p 2")


def test_export_folder_and_zip(tmp_path: Path, red_png: Path):
    s = Store(tmp_path / "data")
    ref = s.import_image(red_png)
    msgs = [Message("user", "what?", (ref,)), Message("assistant", "**red**", (), "cancelled")]
    md = to_markdown("T", msgs)
    assert md.startswith("# T") and f"![red square.png](images/{ref.sha256}.png)" in md and "*(stopped)*" in md
    out = export_session("T", msgs, s.images_dir, tmp_path / "exp")
    assert (out / "images" / f"{ref.sha256}.png").read_bytes() == red_png.read_bytes()
    z = export_session("T", msgs, s.images_dir, tmp_path / "exp.zip")
    assert sorted(zipfile.ZipFile(z).namelist()) == [f"images/{ref.sha256}.png", "session.md"]
    with pytest.raises(UsageError, match="nothing to export"):
        export_session("T", [], s.images_dir, tmp_path / "e2")
    s.close()


def test_launch_reports_an_unusable_data_dir(tmp_path: Path, monkeypatch):
    import argparse

    from llava_local.errors import LlavaLocalError
    from tui import launch

    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "data").write_text("a file where the data folder should be")
    monkeypatch.setenv("LLAVA_LOCAL_HOME", str(tmp_path / "home"))
    args = argparse.Namespace(images=[], model=None, device="auto", quant=None, n_ctx=None, session=None, system=None,
                              temperature=None, top_p=None, top_k=None, repeat_penalty=None, max_tokens=None, seed=None)
    with pytest.raises(LlavaLocalError, match="cannot open the sessions database"):
        launch(args)
    args.temperature = -1.0
    with pytest.raises(UsageError, match="temperature"):
        launch(args)
