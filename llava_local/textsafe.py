"""Model text made safe for a terminal: no escape sequences, no control characters but newline and tab.

Contract: `clean(text)` and the streaming `TerminalText().feed(chunk)` / `.flush()` return the text with every
ANSI/ECMA-48 sequence removed whole (CSI `ESC [ … final`, OSC/DCS/SOS/PM/APC strings up to BEL or ST, two-byte
`ESC x` escapes, and their 8-bit C1 forms) and every other C0 control, DEL and C1 control dropped; `\\n` and `\\t`
are kept. The output never contains U+0000–U+0008, U+000B–U+001F, U+007F or U+0080–U+009F, whatever the input,
so a hostile or broken model cannot move the cursor, set the window title, write to the clipboard (OSC 52) or
hide text. A sequence split across chunks is removed as if it had come in one piece. Used by one-shot chat and
the TUI for everything the model writes.
"""

from __future__ import annotations

ESC, BEL = "\x1b", "\x07"
_KEEP = frozenset("\n\t")
_C1_CSI, _C1_ST = "\x9b", "\x9c"
_C1_STRINGS = frozenset("\x90\x98\x9d\x9e\x9f")  # DCS, SOS, OSC, PM, APC: a string up to ST or BEL
_ESC_STRINGS = frozenset("P]X^_")  # the same after ESC
_MAX_HELD = 4096  # an unterminated sequence longer than this is dropped rather than held forever


def _is_control(c: str) -> bool:
    o = ord(c)
    return (o < 0x20 and c not in _KEEP) or 0x7F <= o <= 0x9F


class TerminalText:
    """Streaming sanitizer: `feed` returns what is safe to print now, `flush` ends the stream."""

    def __init__(self) -> None:
        self._state = "text"  # text | esc | csi | string | string_esc
        self._held = 0

    def feed(self, chunk: str) -> str:
        out: list[str] = []
        for c in chunk:
            state = self._state
            if state == "text":
                if c == ESC:
                    self._enter("esc")
                elif c == _C1_CSI:
                    self._enter("csi")
                elif c in _C1_STRINGS:
                    self._enter("string")
                elif not _is_control(c):
                    out.append(c)
                continue
            self._held += 1
            if self._held > _MAX_HELD:
                self._state = "text"
            elif state == "esc":
                if c == "[":
                    self._state = "csi"
                elif c in _ESC_STRINGS:
                    self._state = "string"
                elif " " <= c <= "/":  # intermediate bytes: the escape goes on
                    pass
                else:  # final byte (or anything else): the escape is over
                    self._state = "text"
                    if _is_control(c):
                        out.append(self.feed(c))
            elif state == "csi":
                if "@" <= c <= "~":
                    self._state = "text"
                elif not " " <= c <= "?":  # not a parameter/intermediate byte: the sequence is broken off
                    self._state = "text"
                    out.append(self.feed(c))
            elif state == "string":
                if c in (BEL, _C1_ST):
                    self._state = "text"
                elif c == ESC:
                    self._state = "string_esc"
                elif c == "\n":  # terminals would swallow the rest of the answer; we keep it (no ESC was sent)
                    self._state = "text"
                    out.append(c)
            elif state == "string_esc":  # ESC \ is ST; any other ESC starts over inside the string
                self._state = "text" if c == "\\" else "string"
        return "".join(out)

    def _enter(self, state: str) -> None:
        self._state, self._held = state, 0

    def flush(self) -> str:
        """End of stream: an unfinished sequence is dropped."""
        self._state, self._held = "text", 0
        return ""


def clean(text: str) -> str:
    """`text` without escape sequences and control characters (newline and tab kept)."""
    if text.isprintable():  # the common case: nothing to do (isprintable is False for \n, \t and all controls)
        return text
    return TerminalText().feed(text)
