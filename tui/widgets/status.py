"""`StatusBar`: model and quantization, backends, context used / max, speed of the last answer."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from textual.widgets import Static


@dataclass(frozen=True)
class Status:
    """What the bar shows; the app replaces it with `StatusBar.set(**changes)`."""

    model: str = "no model"
    quant: str = ""
    llm_backend: str = "-"
    vision_backend: str = "-"
    context_used: int = 0
    context_max: int = 0
    ttft_s: float | None = None  # time to first token of the last answer, seconds
    tokens_per_s: float | None = None
    state: str = "loading…"  # ready | generating… | loading… | error

    def render(self) -> str:
        model = f"{self.model} {self.quant}".strip()
        speed = "—" if self.ttft_s is None else f"TTFT {self.ttft_s:.2f} s · {self.tokens_per_s or 0:.1f} tok/s"
        # Most changing first, so a narrow terminal cuts the backends rather than the state.
        return (f" {self.state} │ {model} │ ctx {self.context_used}/{self.context_max} │ {speed} │ "
                f"LLM {self.llm_backend} · vision {self.vision_backend}")


class StatusBar(Static):
    """One line at the bottom of the main screen."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("", markup=False, **kwargs)
        self.status = Status()

    def on_mount(self) -> None:
        self.update(self.status.render())

    def set(self, **changes: Any) -> None:
        self.status = replace(self.status, **changes)
        self.update(self.status.render())
