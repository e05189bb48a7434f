"""Slash commands: one table, parsing and completion.

Contract: `COMMANDS` maps a command name to its argument hint and help line; the app handles `/name` with
its method `cmd_<name>(arg: str)`. `parse(text)` returns `(name, arg)` for a slash command or None for a
prompt (`//text` sends a literal "/text"); `complete(text)` returns the candidate completions of a partly
typed command line. The help screen and the completion hint read the same table.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from llava_local.config import GenerationConfig
from llava_local.errors import UsageError

from .attach import complete_path


@dataclass(frozen=True)
class Command:
    name: str
    args: str
    help: str


COMMANDS: dict[str, Command] = {c.name: c for c in (
    Command("image", "PATH…", "attach one or more images to the next question"),
    Command("images", "", "list the images waiting to be sent; /images clear drops them"),
    Command("clear", "", "forget the conversation (the saved session is emptied)"),
    Command("new", "", "start a new session (the current one stays saved)"),
    Command("sessions", "", "open the sessions screen: resume, rename, delete"),
    Command("rename", "TITLE", "rename the current session"),
    Command("model", "NAME|PATH", "switch to another model bundle (no argument: show the current one)"),
    Command("system", "TEXT", "set the system prompt (no argument: back to the template's)"),
    Command("set", "KEY VALUE", "change a setting: temperature, top_p, top_k, repeat_penalty, max_tokens, seed"),
    Command("settings", "", "open the settings screen"),
    Command("retry", "", "regenerate the last answer"),
    Command("copy", "", "copy the last answer to the clipboard"),
    Command("export", "[PATH]", "write the session as Markdown with its images (a folder, or PATH.zip)"),
    Command("help", "", "show every key binding and command"),
    Command("quit", "", "leave the app"),
)}

SETTABLE = ("temperature", "top_p", "top_k", "repeat_penalty", "max_tokens", "seed")


def parse(text: str) -> tuple[str, str] | None:
    """`("image", "a.png")` for "/image a.png"; None for a prompt. Unknown commands raise UsageError."""
    stripped = text.strip()
    if not stripped.startswith("/") or stripped.startswith("//"):
        return None
    name, _, arg = stripped[1:].partition(" ")
    if name not in COMMANDS:
        near = [c for c in COMMANDS if c.startswith(name[:2])] if name else []
        hint = f" (did you mean /{near[0]}?)" if near else ""
        raise UsageError(f"unknown command /{name}{hint}: type /help for the list")
    return name, arg.strip()


def prompt_text(text: str) -> str:
    """The text to send: a leading '//' escapes a literal '/'."""
    s = text.strip()
    return s[1:] if s.startswith("//") else s


def complete(text: str) -> list[str]:
    """Full-line completions for a partly typed slash command (its name, a /set key, or a /image path)."""
    if not text.startswith("/") or "\n" in text:
        return []
    name, space, arg = text[1:].partition(" ")
    if not space:
        return [f"/{c} " if COMMANDS[c].args else f"/{c}" for c in COMMANDS if c.startswith(name)]
    if name == "image":
        head, _, last = arg.rpartition(" ")
        lead = f"/image {head} " if head else "/image "
        return [lead + c for c in complete_path(last)]
    if name == "set" and " " not in arg:
        return [f"/set {k} " for k in SETTABLE if k.startswith(arg)]
    return []


def common_prefix(options: list[str]) -> str:
    """The longest common prefix of `options` ("" for none)."""
    return os.path.commonprefix(options) if options else ""


def apply_set(cfg: GenerationConfig, arg: str) -> GenerationConfig:
    """`/set temperature 0.2` → a validated copy of `cfg`."""
    key, _, value = arg.partition(" ")
    if key not in SETTABLE or not value.strip():
        raise UsageError(f"usage: /set KEY VALUE with KEY one of {', '.join(SETTABLE)}")
    kind = type(getattr(cfg, key))
    try:
        parsed = kind(value.strip())
    except ValueError:
        raise UsageError(f"/set {key}: {value.strip()!r} is not a {kind.__name__}") from None
    return cfg.with_(**{key: parsed})


# Keys handled below the app (widgets, screens), for the help screen: (where, key, does). The app's own
# bindings are read from `LlavaApp.BINDINGS`.
OTHER_KEYS = [
    ("prompt", "enter", "send the question (or run the /command)"),
    ("prompt", "shift+enter / ctrl+j / alt+enter", "new line"),
    ("prompt", "tab", "complete a /command, /set key or /image path"),
    ("prompt", "ctrl+v / paste / drop", "pasting image file paths attaches them"),
    ("message", "c", "copy the focused message (OSC 52)"),
    ("sessions", "enter / r / d / esc", "resume / rename / delete / close"),
    ("settings", "ctrl+s / esc", "save / cancel"),
    ("image picker", "enter / esc", "attach the highlighted image / cancel"),
]
