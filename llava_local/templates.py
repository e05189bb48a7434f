"""Chat templates: one registry shared by training and inference.

Contract: `get_template(name).render(turns)` turns a conversation into a flat list of `Piece`s, text or
image, in the exact string layout the model was trained on. Training tokenizes the same pieces and puts
the loss only on pieces marked `trainable` (the assistant's answers and their end marker); the runtime
tokenizes the text between images chunk by chunk (BOS only on the first chunk, as LLaVA's
`tokenizer_image_token` does) and decodes image embeddings where the image pieces stand.

Layouts follow LLaVA's `conversation.py`:
- `vicuna_v1` (LLaVA-1.5 finetune/eval):   "<sys> USER: <image>\\nQ ASSISTANT: A</s>USER: Q2 ASSISTANT:"
- `llava_v1`: the same with "human" in the system text.
- `plain` (stage 1 alignment): "<image>" + caption + "\\n"; the user's text is not part of the prompt.
- `llama_2`: "[INST] <<SYS>>\\n<sys>\\n<</SYS>>\\n\\n<image>\\nQ [/INST] A </s><s>[INST] Q2 [/INST]"
- `chatml`: "<|im_start|>system\\n<sys><|im_end|>\\n<|im_start|>user\\n<image>\\nQ<|im_end|>\\n<|im_start|>assistant\\n"

Images of a user turn are placed as LLaVA places them: one "<image>\\n" per image at the start of the text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from .errors import TemplateError

IMAGE_TOKEN = "<image>"

Role = Literal["user", "assistant"]


@dataclass(frozen=True)
class Turn:
    """One message of a conversation. `n_images` images precede the text of a user turn."""

    role: Role
    text: str
    n_images: int = 0


@dataclass(frozen=True)
class Piece:
    """A piece of a rendered conversation: text (maybe trainable) or one image slot."""

    kind: Literal["text", "image"]
    text: str = ""
    trainable: bool = False


def _text(text: str, trainable: bool = False) -> Piece:
    return Piece("text", text, trainable)


IMAGE = Piece("image")

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
LLAMA_2_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content "
    "that the user provides, and assist the user with a variety of tasks using natural language."
)
CHATML_SYSTEM = "A conversation between a user and an AI assistant. The assistant gives helpful and honest answers."


@dataclass(frozen=True)
class ChatTemplate:
    """A named prompt layout. `style` picks the renderer; the rest are its strings."""

    name: str
    style: Literal["two", "plain", "llama_2", "chatml"]
    system: str = ""
    roles: tuple[str, str] = ("USER", "ASSISTANT")
    sep: str = " "
    sep2: str = "</s>"
    stop_strings: tuple[str, ...] = field(default_factory=tuple)

    def render(
        self,
        turns: Sequence[Turn],
        *,
        system: str | None = None,
        add_generation_prompt: bool = True,
    ) -> list[Piece]:
        """Render `turns` (alternating user/assistant, user first) into pieces.

        With `add_generation_prompt`, a conversation ending in a user turn gets the open assistant header
        the model continues from. `system` overrides the template's system text ("" removes it).
        """
        _check_turns(turns)
        sys_text = self.system if system is None else system
        render = _RENDERERS[self.style]
        pieces = render(self, turns, sys_text, add_generation_prompt and turns[-1].role == "user")
        return _merge(pieces)

    def to_string(self, pieces: Sequence[Piece]) -> str:
        """The pieces as one string with `<image>` where images go (LLaVA's own prompt string)."""
        return "".join(IMAGE_TOKEN if p.kind == "image" else p.text for p in pieces)


def _check_turns(turns: Sequence[Turn]) -> None:
    if not turns:
        raise TemplateError("a conversation needs at least one user turn")
    for i, turn in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if turn.role != expected:
            raise TemplateError(f"turn {i} is from {turn.role!r}; turns must alternate user/assistant, user first")
        if turn.n_images and turn.role != "user":
            raise TemplateError("only user turns can carry images")


def _user_pieces(turn: Turn) -> list[Piece]:
    # LLaVA moves every <image> to the start of the message, each followed by a newline.
    pieces: list[Piece] = []
    for _ in range(turn.n_images):
        pieces += [IMAGE, _text("\n")]
    pieces.append(_text(turn.text))
    return pieces


def _render_two(t: ChatTemplate, turns: Sequence[Turn], system: str, open_turn: bool) -> list[Piece]:
    user, assistant = t.roles
    pieces = [_text(system + t.sep)]
    for turn in turns:
        if turn.role == "user":
            pieces += [_text(f"{user}: "), *_user_pieces(turn), _text(t.sep)]
        else:
            # The answer carries its leading space: SentencePiece glues it to the first word ("▁A"),
            # so the trainable span starts on a token boundary.
            pieces += [_text(f"{assistant}:"), _text(" " + turn.text + t.sep2, trainable=True)]
    if open_turn:
        pieces.append(_text(f"{assistant}:"))
    return pieces


def _render_plain(t: ChatTemplate, turns: Sequence[Turn], system: str, open_turn: bool) -> list[Piece]:
    # Stage-1 format: only the images and the caption; the instruction text is dropped, as in LLaVA.
    pieces: list[Piece] = [_text(system)] if system else []
    for turn in turns:
        if turn.role == "user":
            pieces += [IMAGE] * turn.n_images
        else:
            pieces.append(_text(turn.text + t.sep, trainable=True))
    return pieces


def _render_llama_2(t: ChatTemplate, turns: Sequence[Turn], system: str, open_turn: bool) -> list[Piece]:
    pieces: list[Piece] = []
    for i, turn in enumerate(turns):
        if turn.role == "user":
            head = "[INST] "
            if i == 0 and system:
                head += f"<<SYS>>\n{system}\n<</SYS>>\n\n"
            if i > 0:
                head = "<s>" + head
            pieces += [_text(head), *_user_pieces(turn), _text(" [/INST]")]
        else:
            pieces.append(_text(" " + turn.text + " " + t.sep2, trainable=True))
    return pieces


def _render_chatml(t: ChatTemplate, turns: Sequence[Turn], system: str, open_turn: bool) -> list[Piece]:
    pieces: list[Piece] = [_text(f"<|im_start|>system\n{system}<|im_end|>\n")] if system else []
    for turn in turns:
        if turn.role == "user":
            pieces += [_text("<|im_start|>user\n"), *_user_pieces(turn), _text("<|im_end|>\n")]
        else:
            pieces += [_text("<|im_start|>assistant\n"), _text(turn.text + "<|im_end|>", trainable=True)]
            pieces.append(_text("\n"))
    if open_turn:
        pieces.append(_text("<|im_start|>assistant\n"))
    return pieces


_RENDERERS = {"two": _render_two, "plain": _render_plain, "llama_2": _render_llama_2, "chatml": _render_chatml}


def _merge(pieces: list[Piece]) -> list[Piece]:
    """Join neighbouring text pieces of the same trainability; drop empty text."""
    out: list[Piece] = []
    for p in pieces:
        if p.kind == "text" and not p.text:
            continue
        if out and p.kind == "text" and out[-1].kind == "text" and out[-1].trainable == p.trainable:
            out[-1] = _text(out[-1].text + p.text, p.trainable)
        else:
            out.append(p)
    return out


def text_chunks(pieces: Sequence[Piece]) -> list[str]:
    """The text between images: always `n_images + 1` strings (some may be empty)."""
    chunks = [""]
    for p in pieces:
        if p.kind == "image":
            chunks.append("")
        else:
            chunks[-1] += p.text
    return chunks


TEMPLATES: dict[str, ChatTemplate] = {
    t.name: t
    for t in (
        ChatTemplate("vicuna_v1", "two", VICUNA_SYSTEM, stop_strings=("</s>",)),
        ChatTemplate("llava_v1", "two", LLAVA_V1_SYSTEM, stop_strings=("</s>",)),
        ChatTemplate("plain", "plain", "", roles=("", ""), sep="\n", sep2="", stop_strings=("\n",)),
        ChatTemplate("llama_2", "llama_2", LLAMA_2_SYSTEM, sep="<s>", stop_strings=("</s>",)),
        ChatTemplate("chatml", "chatml", CHATML_SYSTEM, sep="<|im_end|>", sep2="", stop_strings=("<|im_end|>",)),
    )
}


def get_template(name: str) -> ChatTemplate:
    """Look a template up by name; the error lists the known names."""
    try:
        return TEMPLATES[name]
    except KeyError:
        known = ", ".join(sorted(TEMPLATES))
        raise TemplateError(f"unknown chat template {name!r}; known templates: {known}") from None
