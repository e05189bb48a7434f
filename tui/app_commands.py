"""The slash-command handlers of `LlavaApp`, one `cmd_<name>(arg)` per entry of `tui.commands.COMMANDS`.

A mixin so `app.py` stays about layout, streaming and persistence. Handlers raise `LlavaLocalError`
subclasses for user mistakes; the app turns them into notifications.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from llava_local.errors import UsageError

from . import commands
from .attach import split_paths
from .export import export_session
from .screens.help import HelpScreen
from .screens.sessions import SessionsScreen
from .screens.settings import SettingsScreen

if TYPE_CHECKING:
    from .app import LlavaApp

    _Base = LlavaApp
else:
    _Base = object


class CommandsMixin(_Base):
    """`/image`, `/clear`, `/new`, `/sessions`, `/model`, `/system`, `/set`, `/export`, `/help`, …"""

    def cmd_image(self, arg: str) -> None:
        paths = split_paths(arg)
        if not paths:
            raise UsageError("usage: /image PATH [PATH…] (quote paths with spaces), or ctrl+o to pick one")
        for p in paths:
            self.attach(p)

    def cmd_images(self, arg: str) -> None:
        if arg == "clear":
            self.pending_images = []
            self._show_pending()
        names = ", ".join(r.name for r in self.pending_images) or "none"
        self.notify(f"images for the next question: {names}")

    def _idle(self) -> None:
        if self.busy:
            raise UsageError("still answering: press Esc to stop it first")

    def cmd_clear(self, arg: str) -> None:
        self._idle()
        if self.session is not None:
            self.session.clear()
        if self.session_id is not None:
            self.store.clear_messages(self.session_id)
        self.history = []
        self.conversation.remove_children()
        self.status.set(context_used=0)

    def cmd_new(self, arg: str) -> None:
        self._idle()
        if self.session is not None:
            self.session.clear()
        self.session_id, self.history, self.sub_title = None, [], ""
        self.conversation.remove_children()
        self.conversation.show_suggestions(self.suggested_prompts)
        self.status.set(context_used=0)
        self.notify("New session")

    def cmd_sessions(self, arg: str) -> None:
        self._idle()
        self.store.sessions()  # a failing database is a notification here, not a crash inside the screen

        def chosen(session_id: int | None) -> None:
            if session_id is not None and self.model is not None:
                self._resume_worker(session_id)
            elif self.session_id is not None and self.store.session(self.session_id) is None:
                self.cmd_new("")  # the current session was deleted in the screen
        self.push_screen(SessionsScreen(self.store, self.session_id), chosen)

    def cmd_rename(self, arg: str) -> None:
        if not arg:
            raise UsageError("usage: /rename TITLE")
        if self.session_id is None:
            raise UsageError("nothing saved yet: ask something first, then rename the session")
        self.store.update_session(self.session_id, title=arg)
        self.sub_title = arg

    def cmd_model(self, arg: str) -> None:
        if not arg:
            info = getattr(self.model, "info", None)
            self.notify(f"model: {info.name} {info.quant}" if info else "no model loaded: /model NAME|PATH")
            return
        self._idle()
        if self.session_id is not None:
            self.store.update_session(self.session_id, model=arg)
        self._open_model(arg)

    def cmd_system(self, arg: str) -> None:
        self._apply_settings(self.generation, arg or None)
        self.notify("System prompt set" if arg else "System prompt: the model's default")

    def cmd_set(self, arg: str) -> None:
        cfg = commands.apply_set(self.generation, arg)
        self._apply_settings(cfg, self.system)
        self.notify(f"{arg.split()[0]} = {getattr(cfg, arg.split()[0])}")

    def cmd_settings(self, arg: str) -> None:
        def saved(result: Any) -> None:
            if result is not None:
                self._apply_settings(*result)
                self.notify("Settings saved")
        self.push_screen(SettingsScreen(self.generation, self.system), saved)

    def _apply_settings(self, generation: Any, system: str | None) -> None:
        self._idle()
        self.generation, self.system = generation, system
        if self.session is not None:
            self.session.generation = generation
            self.session.system = system
        if self.session_id is not None:
            self.store.update_session(self.session_id, settings=generation.to_dict(), system=system)

    def cmd_retry(self, arg: str) -> None:
        from .app import _Pending

        self._idle()
        if not self.history or self.history[-1].role != "assistant" or self.session is None:
            raise UsageError("nothing to regenerate yet: ask a question first")
        old = self.conversation.last_answer()
        if old is not None:
            old.display = False
        turn = self.conversation.add_assistant()
        user = self.history[-2]
        self._run(_Pending(user, turn, regenerate=True, prompt=user.text, replaced=old))

    def cmd_copy(self, arg: str) -> None:
        answers = [m for m in self.history if m.role == "assistant"]
        if not answers:
            raise UsageError("no answer to copy yet")
        self.copy_to_clipboard(answers[-1].text)
        self.notify("Copied the last answer to the clipboard")

    def cmd_export(self, arg: str) -> None:
        title = self.sub_title or "llava-local session"
        dest = Path(arg).expanduser() if arg else Path.cwd() / f"llava-session-{self.session_id or 'unsaved'}"
        written = export_session(title, self.history, self.store.images_dir, dest)
        self.notify(f"Exported to {written}")

    def cmd_help(self, arg: str) -> None:
        keys = [("app", b.key, b.tooltip or b.description) for b in self.BINDINGS if hasattr(b, "key")]
        self.push_screen(HelpScreen(keys + commands.OTHER_KEYS))

    def cmd_quit(self, arg: str) -> None:
        self.exit(0)
