"""Pilot tests of the app against the fake backend: streaming, attachments, cancel, commands, errors."""

from __future__ import annotations

from tuifakes import FakeBackend
from tuihelpers import notifications, wait_until

from tui.app import LlavaApp
from tui.screens.sessions import SessionsScreen
from tui.store import Store
from tui.widgets.assistant_turn import AssistantTurn
from tui.widgets.prompt import PromptInput
from tui.widgets.user_turn import UserTurn


def make_app(fake: FakeBackend, store: Store, **kw) -> LlavaApp:
    return LlavaApp(fake.as_backend(), store, preview="halfcell", **kw)


async def type_and_send(pilot, text: str) -> None:
    pilot.app.query_one(PromptInput).text = text
    await pilot.press("enter")


async def test_ask_about_image_streams_and_saves(fake, store, red_png):
    app = make_app(fake, store, images=[str(red_png)])
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.session is not None, what="model open")
        assert [r.name for r in app.pending_images] == ["red square.png"]
        await type_and_send(pilot, "What is this?")
        await wait_until(pilot, lambda: not app.busy and app.history, what="answer")
        answer = app.query(AssistantTurn).last()
        assert answer.text == "A **red** square on a white background."
        assert "42.0 tok/s" in str(answer.query_one(".footer").render())
        assert app.status.status.ttft_s == 0.05 and app.status.status.context_used > 0
        assert fake.sessions[0].asked[0][0] == "What is this?"
        assert app.pending_images == []
    msgs = store.messages(app.session_id)
    assert [m.role for m in msgs] == ["user", "assistant"]
    assert msgs[0].images[0].name == "red square.png"
    assert store.image_path(msgs[0].images[0]).read_bytes() == red_png.read_bytes()


async def test_second_image_mid_conversation(fake, store, red_png, blue_png):
    app = make_app(fake, store, images=[str(red_png)])
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.session is not None)
        await type_and_send(pilot, "first?")
        await wait_until(pilot, lambda: len(app.history) == 2)
        await type_and_send(pilot, f"/image '{blue_png}'")
        await pilot.pause()
        assert [r.name for r in app.pending_images] == ["blue.png"]
        await type_and_send(pilot, "and this one?")
        await wait_until(pilot, lambda: len(app.history) == 4)
        assert len(app.query(UserTurn)) == 2
        assert fake.sessions[0].asked[1][1][0].endswith(".png")
        assert fake.encode_calls == 2


async def test_escape_cancels_and_keeps_partial_answer(fake, store):
    fake.default_answer = " ".join(f"w{i}" for i in range(400))
    fake.chunk_delay = 0.01
    app = make_app(fake, store)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.session is not None)
        await type_and_send(pilot, "tell me a long story")
        await wait_until(pilot, lambda: len(app.query(AssistantTurn).last().text) > 10, what="some text")
        await pilot.press("escape")
        await wait_until(pilot, lambda: not app.busy, what="cancel")
        answer = app.query(AssistantTurn).last()
        assert answer.has_class("stopped")
        assert 0 < len(answer.text.split()) < 400
        assert app.history[-1].stop_reason == "cancelled"
        assert app.status.status.state == "stopped"
    assert store.messages(app.session_id)[-1].stop_reason == "cancelled"


async def test_bad_image_path_notifies_and_app_lives(fake, store, tmp_path):
    app = make_app(fake, store, images=[str(tmp_path / "nope.png")])
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.session is not None)
        not_image = tmp_path / "notes.png"
        not_image.write_text("hello")
        await type_and_send(pilot, f"/image {not_image}")
        await pilot.pause()
        notes = notifications(app)
        assert any(sev == "error" and "image not found" in msg for sev, msg in notes)
        assert any(sev == "error" and "not a readable image" in msg for sev, msg in notes)
        assert app.pending_images == []
        await type_and_send(pilot, "/bogus")
        await pilot.pause()
        assert any("unknown command /bogus" in msg for _, msg in notifications(app))
        assert app.is_running


async def test_missing_model_and_context_overflow_notify(fake, store):
    app = make_app(fake, store, model="missing-model")
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: any("no model" in m for _, m in notifications(app)), what="error")
        await type_and_send(pilot, "hello")
        await pilot.pause()
        assert any("no model is loaded" in m for _, m in notifications(app))
        await type_and_send(pilot, "/model crash")
        await wait_until(pilot, lambda: any("cannot open the model: RuntimeError" in m for _, m in notifications(app)))
        assert app.is_running
        await type_and_send(pilot, "/model fake-2")
        await wait_until(pilot, lambda: app.session is not None)
        assert app.status.status.model == "fake-2"
        await type_and_send(pilot, "OVERFLOW please")
        await wait_until(pilot, lambda: any("no longer fits" in m for _, m in notifications(app)))
        assert not app.query(UserTurn)  # the failed question is taken back…
        assert app.query_one(PromptInput).text == "OVERFLOW please"  # …and its text returned to the prompt


async def test_regenerate_replaces_last_answer(fake, store):
    fake.answers = ["first answer", "second answer"]
    app = make_app(fake, store)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.session is not None)
        await type_and_send(pilot, "q")
        await wait_until(pilot, lambda: len(app.history) == 2)
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: app.history[-1].text == "second answer" and not app.busy)
        await pilot.pause()
        assert [a.text for a in app.query(AssistantTurn)] == ["second answer"]
    assert [m.text for m in store.messages(app.session_id)] == ["q", "second answer"]


async def test_commands_set_system_copy_clear_export(fake, store, red_png, tmp_path):
    app = make_app(fake, store, images=[str(red_png)])
    copied: list[str] = []
    async with app.run_test(size=(100, 30)) as pilot:
        app.copy_to_clipboard = copied.append  # observe OSC 52 without a real terminal
        await wait_until(pilot, lambda: app.session is not None)
        await type_and_send(pilot, "/set temperature 0.7")
        await pilot.pause()
        assert app.session.generation.temperature == 0.7
        await type_and_send(pilot, "/set temperature -1")
        await pilot.pause()
        assert any("temperature must be >= 0" in m for _, m in notifications(app))
        await type_and_send(pilot, "/system Be terse.")
        await pilot.pause()
        assert app.session.system == "Be terse."
        await type_and_send(pilot, "what?")
        await wait_until(pilot, lambda: len(app.history) == 2)
        await type_and_send(pilot, "/copy")
        await pilot.pause()
        assert copied == [fake.default_answer]
        await type_and_send(pilot, f"/export {tmp_path / 'out.zip'}")
        await pilot.pause()
        await type_and_send(pilot, f"/export {tmp_path / 'outdir'}")
        await pilot.pause()
        row = store.session(app.session_id)
        assert row.settings["temperature"] == 0.7 and row.system == "Be terse."
        await type_and_send(pilot, "/clear")
        await pilot.pause()
        assert not app.query(AssistantTurn) and app.history == []
    md = (tmp_path / "outdir" / "session.md").read_text()
    assert "## You" in md and "![red square.png](images/" in md and fake.default_answer in md
    assert len(list((tmp_path / "outdir" / "images").iterdir())) == 1
    import zipfile

    assert sorted(zipfile.ZipFile(tmp_path / "out.zip").namelist())[0].startswith("images/")


async def test_prompt_newline_and_completion(fake, store):
    app = make_app(fake, store)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.session is not None)
        prompt = app.query_one(PromptInput)
        await pilot.press("a", "ctrl+j", "b")
        assert prompt.text == "a\nb"
        prompt.text = ""
        await pilot.press("/", "s", "e")
        await pilot.pause()
        assert "/sessions" in str(app.query_one("#completions").render())
        await pilot.press("t", "tab")
        assert prompt.text == "/set"  # ambiguous (/set, /settings): the hint shows both
        await pilot.press("space", "t", "e", "tab")
        assert prompt.text == "/set temperature "


async def test_paste_image_paths_attaches(fake, store, red_png, blue_png):
    from textual import events

    app = make_app(fake, store)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.session is not None)
        prompt = app.query_one(PromptInput)
        app.post_message(events.Paste(f"'{red_png}' {blue_png}"))
        await pilot.pause()
        assert [r.name for r in app.pending_images] == ["red square.png", "blue.png"]
        assert prompt.text == ""
        app.post_message(events.Paste("just some words"))
        await pilot.pause()
        assert prompt.text == "just some words"


async def test_sessions_screen_resume_rename_delete(fake, store, red_png):
    app = make_app(fake, store, images=[str(red_png)])
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.session is not None)
        await type_and_send(pilot, "first session")
        await wait_until(pilot, lambda: len(app.history) == 2)
        first = app.session_id
        await pilot.press("ctrl+n")
        await type_and_send(pilot, "second session")
        await wait_until(pilot, lambda: len(app.history) == 2)
        await pilot.press("ctrl+s")
        await pilot.pause()
        await pilot.press("r", "escape")  # Esc closes the rename field, not the screen
        await pilot.pause()
        assert isinstance(app.screen, SessionsScreen)
        await pilot.press("r")
        await pilot.press(*"renamed", "enter")  # the old title is selected: typing replaces it
        await pilot.pause()
        assert store.session(app.session_id).title == "renamed"
        await pilot.press("down", "enter")
        await wait_until(pilot, lambda: app.session_id == first, what="resume")
        assert [m.text for m in app.history][0] == "first session"
        assert fake.sessions[-1].restored_images  # the stored image is handed to restore
        await pilot.press("ctrl+s")
        await pilot.pause()
        await pilot.press("down", "d")
        await pilot.pause()
        assert len(store.sessions()) == 1
        await pilot.press("escape")


async def test_help_lists_every_binding(fake, store):
    app = make_app(fake, store)
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press("f1")
        await pilot.pause()
        keys = {k for _, k, _ in app.screen.keys}
        assert {b.key for b in app.BINDINGS} <= keys
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is app.screen_stack[0]


async def test_view_sticks_to_bottom_unless_scrolled_up(fake, store):
    fake.default_answer = "\n\n".join(f"paragraph {i}" for i in range(120))
    fake.chunk_delay = 0.01
    app = make_app(fake, store)
    async with app.run_test(size=(80, 20)) as pilot:
        await wait_until(pilot, lambda: app.session is not None)
        await type_and_send(pilot, "long please")
        conv = app.conversation
        await wait_until(pilot, lambda: conv.max_scroll_y > 10, what="overflowing answer")
        await pilot.pause(0.1)
        assert conv.scroll_y >= conv.max_scroll_y - 2  # following the stream
        conv.action_page_up()  # what PageUp / the mouse wheel do: the user takes over
        await pilot.pause(0.2)
        held = conv.scroll_y
        await wait_until(pilot, lambda: conv.max_scroll_y > held + 15, what="more text below")
        assert conv.scroll_y == held  # not dragged back down
        await pilot.press("escape")
        await wait_until(pilot, lambda: not app.busy)


async def test_quit_while_answering_is_clean(fake, store):
    fake.default_answer = " ".join(f"w{i}" for i in range(400))
    fake.chunk_delay = 0.01
    app = make_app(fake, store)
    async with app.run_test(size=(80, 20)) as pilot:
        await wait_until(pilot, lambda: app.session is not None)
        await type_and_send(pilot, "go")
        await wait_until(pilot, lambda: app.query(AssistantTurn).last().text, what="streaming")
        await pilot.press("ctrl+q")
    assert app.return_code in (0, None)
    assert app._cancel.is_set()


async def test_engine_failure_mid_answer_keeps_the_partial_answer(fake, store):
    fake.answers = ["one two CRASH four", "fine"]
    app = make_app(fake, store)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.session is not None)
        await type_and_send(pilot, "q")
        await wait_until(pilot, lambda: not app.busy and app.history, what="failure")
        assert any(sev == "error" and "internal error: RuntimeError" in m for sev, m in notifications(app))
        assert app.history[-1].text == "one two" and app.query(AssistantTurn).last().has_class("stopped")
        assert [t.text for t in app.session.turns] == ["q", "one two"]  # UI, store and session agree
        await type_and_send(pilot, "again")
        await wait_until(pilot, lambda: len(app.history) == 4 and not app.busy)
    assert [m.text for m in store.messages(app.session_id)] == ["q", "one two", "again", "fine"]


async def test_suggested_questions_fill_the_prompt_and_go_away(store):
    from tui.widgets.suggestions import SuggestedPrompt, Suggestions

    fake = FakeBackend(suggested_prompts=("Describe the image briefly.", "How many circles are there?"))
    app = make_app(fake, store)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.session is not None and app.query(Suggestions), what="suggestions")
        shown = [s.text for s in app.query(SuggestedPrompt)]
        assert shown == ["Describe the image briefly.", "How many circles are there?"]
        app.query(SuggestedPrompt)[1].focus()
        await pilot.press("enter")
        assert app.query_one(PromptInput).text == "How many circles are there?"
        assert app.focused is app.query_one(PromptInput)
        await pilot.press("enter")  # send it
        await wait_until(pilot, lambda: not app.busy and app.history, what="answer")
        assert not app.query(Suggestions)  # gone once the conversation has started
        assert fake.sessions[0].asked[0][0] == "How many circles are there?"
        await pilot.press("ctrl+n")  # a new, empty session shows them again
        await wait_until(pilot, lambda: bool(app.query(Suggestions)), what="suggestions again")


async def test_no_suggestions_block_without_suggested_prompts(fake, store):
    from tui.widgets.suggestions import Suggestions

    app = make_app(fake, store)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.session is not None, what="model open")
        await pilot.pause()
        assert not app.query(Suggestions)


async def test_a_session_title_with_markup_characters_lists_fine(fake, store):
    """Titles are the user's own words: "[/]" in one used to be read as Rich markup and crash the sessions screen."""
    from tui.screens.sessions import SessionsScreen

    store.create_session("what is [/] this [bold]", "tiny-demo", {}, None)
    app = make_app(fake, store)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.session is not None, what="model open")
        await app.push_screen(SessionsScreen(store, current=None))
        await pilot.pause()
        assert isinstance(app.screen, SessionsScreen) and app.is_running
        table = app.screen.query_one("DataTable")
        assert "what is [/] this [bold]" in str(table.get_row_at(0)[1])
