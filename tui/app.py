"""`LlavaApp`: the multimodal chat app behind `llava-local chat`.

Contract: `LlavaApp(backend, store, model=…, images=…, generation=…, system=…, resume=…)`; the backend
(see `tui.backend`) is the only way to the engine, so tests inject a fake one. The model opens and every
answer streams in thread workers (`@work(thread=True)`), which hand events to the UI with
`call_from_thread`; the session object is only ever touched from those workers, one at a time. Esc sets
the worker's cancel event; the runtime then finishes with `stop_reason="cancelled"` and the partial answer
is kept, marked and saved. Every finished turn is one SQLite transaction (`tui.store`). User mistakes
(`LlavaLocalError`) become `notify(severity="error")`; the app never dies on user input.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.widgets import Footer, Static

from llava_local.config import GenerationConfig
from llava_local.errors import LlavaLocalError, UsageError
from llava_local.events import Event, Finished, ImageEncoded, PromptProcessed, TextChunk

from . import commands
from .app_commands import CommandsMixin
from .attach import check_image
from .backend import Backend, ChatLike, LoadedModel
from .hangup import watch_terminal
from .screens.image_picker import ImagePickerScreen
from .store import ImageRef, Message, Store, messages_to_turns
from .widgets.assistant_turn import AssistantTurn, stats_line
from .widgets.attachment_bar import AttachmentBar
from .widgets.conversation import Conversation
from .widgets.image_chip import ImageChip
from .widgets.prompt import PromptInput
from .widgets.status import StatusBar
from .widgets.suggestions import Suggestions


@dataclass
class _Pending:
    """A question being answered: what to save when it finishes."""

    user: Message
    turn: AssistantTurn
    regenerate: bool
    prompt: str
    replaced: AssistantTurn | None = None  # regenerate: the old answer, hidden until the new one is done
    started: bool = False  # the prompt reached the KV cache: from here on the runtime keeps the turn


class LlavaApp(CommandsMixin, App[int]):
    """Chat about images with a local LLaVA bundle."""

    CSS_PATH = "app.tcss"
    TITLE = "llava-local"
    BINDINGS = [
        # Not a priority binding: modal screens keep their own Esc (close a rename field, cancel settings).
        Binding("escape", "cancel", "Stop", tooltip="stop the answer (the partial answer is kept)"),
        Binding("ctrl+o", "pick_image", "Image", tooltip="pick an image file to attach (with a preview)"),
        Binding("ctrl+r", "regenerate", "Retry", tooltip="regenerate the last answer"),
        Binding("ctrl+n", "new_session", "New", tooltip="start a new session (the current one stays saved)"),
        Binding("ctrl+s", "sessions", "Sessions", tooltip="saved sessions: resume, rename, delete"),
        Binding("ctrl+t", "settings", "Settings", tooltip="temperature, top_p, max tokens, seed, system prompt"),
        Binding("f1", "help", "Help", tooltip="this list of keys and commands"),
        Binding("ctrl+q", "quit", "Quit", priority=True, tooltip="leave the app (every finished turn is saved)"),
    ]

    def __init__(self, backend: Backend, store: Store, *, model: str | None = None,
                 images: list[str] | None = None, generation: GenerationConfig | None = None,
                 system: str | None = None, resume: str | None = None, preview: str = "auto") -> None:
        super().__init__()
        self.backend, self.store = backend, store
        self.model_name = model
        self.initial_images = list(images or [])
        self.generation = generation or GenerationConfig()
        self.system = system
        self.resume = resume
        self.preview = preview
        self.model: LoadedModel | None = None
        self.session: ChatLike | None = None
        self.session_id: int | None = None
        self.history: list[Message] = []
        self.pending_images: list[ImageRef] = []
        self.events: list[Event] = []  # every engine event, in order (tests count ImageEncoded here)
        self._busy = False
        self._cancel = threading.Event()
        self._current: _Pending | None = None

    # -- layout --------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Conversation(self.preview, id="conversation")
        yield AttachmentBar(id="attachments")
        yield PromptInput(id="prompt")
        yield Static("", id="completions", markup=False)
        yield StatusBar(id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(AttachmentBar).display = False
        self.query_one("#completions").display = False
        self.query_one(PromptInput).focus()
        if getattr(self.store, "notice", None):  # the sessions database was repaired at open (tui.store)
            self.notify(self.store.notice, severity="warning", timeout=20)
        for raw in self.initial_images:
            self.attach(Path(raw).expanduser())
        self._open_model(self.model_name, restore=self._resume_id())
        if not self.is_headless:
            watch_terminal(self)
            self._exit_on_signals()

    def _exit_on_signals(self) -> None:
        """`kill -INT` / `kill -TERM` end the app like Ctrl+Q (terminal restored, finished turns saved), returning
        130 / 143 as one-shot mode does; Python's default would raise inside Textual's event loop."""
        import asyncio
        import signal

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self._exit_for_signal, 128 + sig)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals here
                return

    def _exit_for_signal(self, code: int) -> None:
        self._cancel.set()  # an answer being generated stops at its next token
        self.exit(code)

    def cancel_answer(self) -> None:
        """Thread-safe: the answer being generated stops at its next token (what it has so far is kept)."""
        self._cancel.set()

    def on_unmount(self) -> None:
        # Free llama.cpp's memory now rather than at interpreter exit; a still-running answer keeps it alive
        # (it sees the cancel event at its next token and ends).
        self._cancel.set()
        if self.model is not None and hasattr(self.model, "close") and not self._busy:
            self.model.close()

    @property
    def conversation(self) -> Conversation:
        return self.query_one(Conversation)

    @property
    def status(self) -> StatusBar:
        return self.query_one(StatusBar)

    @property
    def suggested_prompts(self) -> tuple[str, ...]:
        """What the loaded model's manifest suggests asking (shown on an empty conversation)."""
        return tuple(getattr(getattr(self.model, "info", None), "suggested_prompts", ()) or ())

    @property
    def busy(self) -> bool:
        return self._busy

    def _resume_id(self) -> int | None:
        if not self.resume:
            return None
        try:
            saved = self.store.sessions()
        except LlavaLocalError as e:  # StoreError: the database failed after opening
            self.notify(f"cannot resume {self.resume!r}: {e}", severity="error")
            return None
        for s in saved:
            if str(s.id) == self.resume or s.title == self.resume:
                return s.id
        self.notify(f"no saved session {self.resume!r}: press ctrl+s to list them", severity="error")
        return None

    # -- model and sessions (thread workers) -------------------------------------------------
    @work(thread=True, exclusive=True, group="engine", exit_on_error=False)
    def _open_model(self, name: str | None, restore: int | None = None) -> None:
        self.call_from_thread(self.status.set, state="loading…")
        try:
            model = self.backend.open_model(name)
        except Exception as e:  # LlavaLocalError, or a native load failure: either way the app stays up
            msg = str(e) if isinstance(e, LlavaLocalError) else f"cannot open the model: {type(e).__name__}: {e}"
            self.call_from_thread(self._error, msg, "no model: /model NAME|PATH to open one")
            return
        old, self.model, self.model_name = self.model, model, name or getattr(model.info, "name", None)
        if old is not None and hasattr(old, "close"):
            old.close()  # no answer is running (/model waits for idle), so nothing else uses its context
        info = model.info
        self.call_from_thread(self.status.set, model=info.name, quant=info.quant, llm_backend=info.llm_backend,
                              vision_backend=info.vision_backend, context_max=info.context_length)
        self._start_session(restore if restore is not None else self.session_id)

    @work(thread=True, exclusive=True, group="engine", exit_on_error=False)
    def _resume_worker(self, session_id: int) -> None:
        self._start_session(session_id)

    def _start_session(self, session_id: int | None) -> None:
        """(worker thread) A fresh session, or `session_id` restored from the store."""
        try:
            if session_id is None:
                self.session, history = self.backend.new_session(self.model, self.generation, self.system), []
            else:
                row = self.store.session(session_id)
                if row is not None:
                    try:
                        self.generation = GenerationConfig.from_dict(row.settings)
                    except LlavaLocalError as e:  # settings edited or damaged on disk: keep the current ones
                        self.call_from_thread(self.notify, f"the saved settings are unusable ({e}); using the "
                                              "current ones", severity="warning")
                    self.system = row.system
                history = self.store.messages(session_id)
                turns = messages_to_turns(history)
                paths = [str(self.store.image_path(r)) for m in history for r in m.images]
                self.session = self.backend.restore_session(self.model, turns, paths, self.generation, self.system)
        except LlavaLocalError as e:
            self.call_from_thread(self._error, f"cannot resume the session: {e}")
            if session_id is not None:
                self._start_session(None)  # keep the app usable with a fresh conversation
            return
        self.call_from_thread(self._show_session, session_id, history)

    def _show_session(self, session_id: int | None, history: list[Message]) -> None:
        self.session_id, self.history = session_id, list(history)
        conv = self.conversation
        conv.remove_children()
        for m in history:
            if m.role == "user":
                conv.add_user(m.text, [(r.name, self.store.image_path(r)) for r in m.images])
            else:
                conv.add_assistant(m.text, stats_line(m.stats, m.stop_reason))
        if not history:
            conv.show_suggestions(self.suggested_prompts)
        used = getattr(self.session, "context_used", 0)
        self.status.set(state="ready", context_used=used)
        if session_id is not None:
            try:
                row = self.store.session(session_id)
            except LlavaLocalError:
                row = None
            self.sub_title = row.title if row else ""
            self.notify(f"Resumed “{self.sub_title}” ({len(history)} messages)")

    # -- input ---------------------------------------------------------------------------------
    @on(PromptInput.Submitted)
    def _submitted(self, event: PromptInput.Submitted) -> None:
        text = event.text.strip()
        if not text and not self.pending_images:
            return
        try:
            parsed = commands.parse(text)
            if parsed is not None:
                self.query_one(PromptInput).set_text("")
                getattr(self, f"cmd_{parsed[0]}")(parsed[1])
                return
            self.send(commands.prompt_text(text))
        except LlavaLocalError as e:
            self.notify(str(e), severity="error")

    @on(Suggestions.Chosen)
    def _suggestion_chosen(self, event: Suggestions.Chosen) -> None:
        prompt = self.query_one(PromptInput)
        prompt.set_text(event.text)
        prompt.focus()

    @on(PromptInput.ImagesPasted)
    def _pasted(self, event: PromptInput.ImagesPasted) -> None:
        for p in event.paths:
            self.attach(p)

    @on(PromptInput.CompletionsChanged)
    def _completions(self, event: PromptInput.CompletionsChanged) -> None:
        hint = self.query_one("#completions", Static)
        hint.update("  ".join(o.strip() for o in event.options[:8]))
        hint.display = bool(event.options)

    @on(ImageChip.Remove)
    def _remove_chip(self, event: ImageChip.Remove) -> None:
        if 0 <= event.chip.index < len(self.pending_images):
            del self.pending_images[event.chip.index]
            self._show_pending()

    def attach(self, path: Path) -> bool:
        """Check an image and queue it for the next question; a bad one is a notification."""
        try:
            check_image(path)
            self.pending_images.append(self.store.import_image(path))
        except LlavaLocalError as e:
            self.notify(str(e), severity="error")
            return False
        except OSError as e:
            self.notify(f"cannot read {path}: {e.strerror or e}", severity="error")
            return False
        self._show_pending()
        return True

    def _show_pending(self) -> None:
        self.query_one(AttachmentBar).show([r.name for r in self.pending_images])

    # -- asking --------------------------------------------------------------------------------
    def send(self, text: str) -> None:
        """Ask `text` about the pending images."""
        if self._busy:
            raise UsageError("still answering: press Esc to stop it first")
        if self.session is None:
            raise UsageError("no model is loaded yet: wait for it, or open one with /model NAME|PATH")
        if not text:
            raise UsageError("type a question to go with the image")
        user = Message("user", text, tuple(self.pending_images))
        self.pending_images = []
        self._show_pending()
        self.query_one(PromptInput).set_text("")
        self.conversation.hide_suggestions()
        self.conversation.add_user(text, [(r.name, self.store.image_path(r)) for r in user.images])
        turn = self.conversation.add_assistant()
        self._run(_Pending(user, turn, regenerate=False, prompt=text))

    def _run(self, pending: _Pending) -> None:
        self._busy, self._current = True, pending
        self._cancel = threading.Event()
        self.status.set(state="generating… (Esc stops)")
        self._generate(pending, self._cancel)

    @work(thread=True, exclusive=True, group="engine", exit_on_error=False)
    def _generate(self, pending: _Pending, cancel: threading.Event) -> None:
        try:
            if pending.regenerate:
                stream = self.session.regenerate(cancel=cancel)
            else:
                paths = [str(self.store.image_path(r)) for r in pending.user.images]
                stream = self.session.ask(pending.prompt, images=paths, cancel=cancel)
            for event in stream:
                self.call_from_thread(self._on_event, event)
        except Exception as e:  # an engine bug must not kill the chat either; say what happened
            if not self.is_running:
                return  # the app quit mid-answer: nobody to tell
            msg = str(e) if isinstance(e, LlavaLocalError) else f"internal error: {type(e).__name__}: {e}"
            self.call_from_thread(self._failed, msg)

    def _on_event(self, event: Event) -> None:
        self.events.append(event)
        cur = self._current
        if cur is None:
            return
        if isinstance(event, TextChunk):
            cur.turn.append(event.text)
        elif isinstance(event, ImageEncoded):
            self.status.set(state=f"image {event.image_id[:8]} {'cached' if event.cached else 'encoded'}")
        elif isinstance(event, PromptProcessed):
            cur.started = True
            self.status.set(state="answering… (Esc stops)")
        elif isinstance(event, Finished):
            self._finished(cur, event)

    def _finished(self, cur: _Pending, ev: Finished) -> None:
        stats = {"ttft": ev.time_to_first_token, "tps": ev.tokens_per_second, "n_generated": ev.n_generated}
        stopped = ev.stop_reason == "cancelled"
        if cur.replaced is not None:
            cur.replaced.remove()
        cur.turn.text = ev.text or cur.turn.text
        cur.turn.finish(stats_line(stats, ev.stop_reason), stopped=stopped)
        answer = Message("assistant", cur.turn.text, (), ev.stop_reason, stats)
        try:
            self._save(cur, answer)
        except Exception as e:  # a full disk must not lose the on-screen answer
            self.notify(f"could not save the turn: {e}", severity="error")
        self._busy, self._current = False, None
        self.status.set(state="stopped" if stopped else "ready", context_used=ev.context_used,
                        context_max=ev.context_max, ttft_s=ev.time_to_first_token, tokens_per_s=ev.tokens_per_second)

    def _save(self, cur: _Pending, answer: Message) -> None:
        if cur.regenerate:
            self.history[-1] = answer
            if self.session_id is not None:
                self.store.replace_last_answer(self.session_id, answer)
            return
        self.history += [cur.user, answer]
        if self.session_id is None:
            title = cur.user.text.splitlines()[0][:60] if cur.user.text else "untitled"
            self.session_id = self.store.create_session(title, str(self.model_name), self.generation.to_dict(),
                                                        self.system)
            self.sub_title = title
        self.store.save_turn(self.session_id, cur.user, answer)

    def _failed(self, message: str) -> None:
        """The question did not run (bad image, full context…): undo its widgets, give the text back."""
        cur = self._current
        if cur is not None and cur.started:
            # The engine failed mid-answer and keeps the partial answer as the turn (session-api rules), so we do
            # too: shown as stopped and saved, so screen, disk and KV cache stay in step.
            self._finished(cur, Finished(cur.turn.text, "cancelled", 0, 0, 0.0, 0.0,
                                         getattr(self.session, "context_used", 0), self.status.status.context_max))
            self._error(message)
            return
        self._busy, self._current = False, None
        if cur is not None and not cur.regenerate:
            turns = list(self.conversation.children)
            for w in turns[-2:]:
                w.remove()
            self.pending_images = list(cur.user.images)
            self._show_pending()
            self.query_one(PromptInput).set_text(cur.prompt)
        elif cur is not None:
            cur.turn.remove()
            if cur.replaced is not None:
                cur.replaced.display = True
        self._error(message)

    def _error(self, message: str, state: str = "ready") -> None:
        self.notify(message, severity="error", timeout=8)
        self.status.set(state=state if self.session is not None or state != "ready" else "no model")

    # -- actions (keys) ------------------------------------------------------------------------
    def action_cancel(self) -> None:
        if self._busy:
            self._cancel.set()

    def action_regenerate(self) -> None:
        self.cmd_retry("")

    def action_new_session(self) -> None:
        self.cmd_new("")

    def action_sessions(self) -> None:
        try:
            self.cmd_sessions("")
        except LlavaLocalError as e:
            self.notify(str(e), severity="error")

    def action_settings(self) -> None:
        self.cmd_settings("")

    def action_help(self) -> None:
        self.cmd_help("")

    def action_pick_image(self) -> None:
        def picked(path: Path | None) -> None:
            if path is not None:
                self.attach(path)
        self.push_screen(ImagePickerScreen(Path.cwd(), self.preview), picked)
