"""Pilot tests of the settings screen and the image picker (fake backend)."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import Input, TextArea
from tuifakes import FakeBackend
from tuihelpers import notifications, wait_until

from tui.app import LlavaApp
from tui.screens.image_picker import ImagePickerScreen, ImageTree
from tui.screens.settings import SettingsScreen
from tui.store import Store


async def test_settings_screen_validates_and_applies(fake: FakeBackend, store: Store):
    app = LlavaApp(fake.as_backend(), store, preview="none")
    async with app.run_test(size=(100, 40)) as pilot:
        await wait_until(pilot, lambda: app.session is not None)
        await pilot.press("ctrl+t")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, SettingsScreen)
        screen.query_one("#set-temperature", Input).value = "abc"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert any("temperature: 'abc' is not a float" in m for _, m in notifications(app))
        assert app.screen is screen  # stays open on a bad value
        screen.query_one("#set-temperature", Input).value = "0.9"
        screen.query_one("#set-max_tokens", Input).value = "77"
        screen.query_one("#set-system", TextArea).text = "Answer in one word."
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert not isinstance(app.screen, SettingsScreen)
        assert app.session.generation.temperature == 0.9 and app.session.generation.max_tokens == 77
        assert app.session.system == "Answer in one word."


async def test_image_picker_attaches_highlighted_file(fake: FakeBackend, store: Store, red_png: Path, monkeypatch):
    monkeypatch.chdir(red_png.parent)
    (red_png.parent / "notes.txt").write_text("not listed")
    app = LlavaApp(fake.as_backend(), store, preview="halfcell")
    async with app.run_test(size=(100, 40)) as pilot:
        await wait_until(pilot, lambda: app.session is not None)
        await pilot.press("ctrl+o")
        await pilot.pause()
        assert isinstance(app.screen, ImagePickerScreen)
        tree = app.screen.query_one(ImageTree)
        await wait_until(pilot, lambda: len(tree.root.children) >= 1, what="tree loaded")
        names = sorted(str(n.label) for n in tree.root.children)
        assert names == ["red square.png"]  # notes.txt is filtered out
        tree.focus()
        await pilot.press("down", "enter")
        await wait_until(pilot, lambda: not isinstance(app.screen, ImagePickerScreen), what="picker closed")
        assert [r.name for r in app.pending_images] == ["red square.png"]
