"""Turning generated token bytes into streamed text: UTF-8 safe, stop strings held back.

Contract: `TextStream(stop_strings)`; `push(piece_bytes) -> (text, stopped)` returns only text that is final:
never half a UTF-8 character (an incremental decoder keeps partial bytes), and never the beginning of what may
become a stop string (held back until it either completes — then `stopped` is True and the stop string and
everything after it are dropped — or stops matching). `flush()` returns what is still held when generation ends
for another reason. The first piece's leading space (SentencePiece's "▁" after "ASSISTANT:") is dropped, because
the templates put that space back when they render the answer. `text` is everything emitted so far.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable


class TextStream:
    def __init__(self, stop_strings: Iterable[str] = (), strip_leading_space: bool = True) -> None:
        self.stops = tuple(s for s in dict.fromkeys(stop_strings) if s)
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._held = ""
        self._strip = strip_leading_space
        self.text = ""
        self.stopped = False

    def _hold_len(self, s: str) -> int:
        """Length of the longest suffix of `s` that is a proper prefix of some stop string."""
        best = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(s)), best, -1):
                if s.endswith(stop[:k]):
                    best = k
                    break
        return best

    def push(self, data: bytes) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        s = self._decoder.decode(data)
        if self._strip and s:
            s = s[1:] if s.startswith(" ") else s
            self._strip = False
        buf = self._held + s
        cut = min((i for i in (buf.find(stop) for stop in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._held = ""
            out = buf[:cut]
        else:
            hold = self._hold_len(buf)
            out, self._held = buf[:len(buf) - hold], buf[len(buf) - hold:]
        self.text += out
        return out, self.stopped

    def flush(self) -> str:
        """Release held text at the end of generation (not after a stop string)."""
        if self.stopped:
            return ""
        out = self._held + self._decoder.decode(b"", final=True)
        if self._strip and out.startswith(" "):
            out = out[1:]
        self._held = ""
        self.text += out
        return out
