"""Golden strings for every chat template (the exact layouts of LLaVA's conversation.py), trainable spans, text
chunks around images, and the errors for malformed conversations."""

from __future__ import annotations

import pytest

from llava_local.errors import TemplateError
from llava_local.templates import TEMPLATES, Turn, get_template, text_chunks

VICUNA = ("A chat between a curious user and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the user's questions.")
LLAVA = ("A chat between a curious human and an artificial intelligence assistant. "
         "The assistant gives helpful, detailed, and polite answers to the human's questions.")
LLAMA2 = ("You are a helpful language and vision assistant. You are able to understand the visual content that the "
          "user provides, and assist the user with a variety of tasks using natural language.")
CHATML = "A conversation between a user and an AI assistant. The assistant gives helpful and honest answers."

CONV = [Turn("user", "What is this?", 1), Turn("assistant", "A cat."), Turn("user", "Color?")]

GOLDEN = {
    "vicuna_v1": f"{VICUNA} USER: <image>\nWhat is this? ASSISTANT: A cat.</s>USER: Color? ASSISTANT:",
    "llava_v1": f"{LLAVA} USER: <image>\nWhat is this? ASSISTANT: A cat.</s>USER: Color? ASSISTANT:",
    "plain": "<image>A cat.\n",
    "llama_2": (f"[INST] <<SYS>>\n{LLAMA2}\n<</SYS>>\n\n<image>\nWhat is this? [/INST] A cat. </s>"
                "<s>[INST] Color? [/INST]"),
    "chatml": (f"<|im_start|>system\n{CHATML}<|im_end|>\n<|im_start|>user\n<image>\nWhat is this?<|im_end|>\n"
               "<|im_start|>assistant\nA cat.<|im_end|>\n<|im_start|>user\nColor?<|im_end|>\n<|im_start|>assistant\n"),
}


def test_every_template_has_a_golden_string():
    assert set(GOLDEN) == set(TEMPLATES)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_render(name):
    t = get_template(name)
    assert t.to_string(t.render(CONV)) == GOLDEN[name]


@pytest.mark.parametrize("name,expected", [
    ("vicuna_v1", f"{VICUNA} USER: <image>\n<image>\nTwo? ASSISTANT:"),
    ("plain", "<image><image>"),
    ("chatml", f"<|im_start|>system\n{CHATML}<|im_end|>\n<|im_start|>user\n<image>\n<image>\nTwo?<|im_end|>\n"
               "<|im_start|>assistant\n"),
])
def test_two_images_open_turn(name, expected):
    t = get_template(name)
    assert t.to_string(t.render([Turn("user", "Two?", 2)])) == expected


def test_system_override_and_removal():
    t = get_template("vicuna_v1")
    turns = [Turn("user", "Hi")]
    assert t.to_string(t.render(turns, system="Be brief.")) == "Be brief. USER: Hi ASSISTANT:"
    assert t.to_string(t.render(turns, system="")) == " USER: Hi ASSISTANT:"
    c = get_template("chatml")
    assert c.to_string(c.render(turns, system="")) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_no_generation_prompt_after_an_answer():
    t = get_template("vicuna_v1")
    s = t.to_string(t.render(CONV[:2], system="S"))
    assert s == "S USER: <image>\nWhat is this? ASSISTANT: A cat.</s>"


@pytest.mark.parametrize("name,trainable", [
    ("vicuna_v1", [" A cat.</s>"]),
    ("plain", ["A cat.\n"]),
    ("llama_2", [" A cat. </s>"]),
    ("chatml", ["A cat.<|im_end|>"]),
])
def test_only_answers_are_trainable(name, trainable):
    pieces = get_template(name).render(CONV)
    assert [p.text for p in pieces if p.trainable] == trainable


def test_text_chunks_split_at_images():
    t = get_template("vicuna_v1")
    chunks = text_chunks(t.render([Turn("user", "Q", 2)], system="S"))
    assert chunks == ["S USER: ", "\n", "\nQ ASSISTANT:"]
    assert text_chunks(get_template("plain").render([Turn("user", "", 1)])) == ["", ""]


@pytest.mark.parametrize("turns,msg", [
    ([], "at least one"),
    ([Turn("assistant", "x")], "alternate"),
    ([Turn("user", "a"), Turn("user", "b")], "alternate"),
    ([Turn("user", "a"), Turn("assistant", "b", 1)], "only user turns"),
])
def test_bad_conversations(turns, msg):
    with pytest.raises(TemplateError, match=msg):
        get_template("vicuna_v1").render(turns)


def test_unknown_template_lists_known_names():
    with pytest.raises(TemplateError, match="vicuna_v1"):
        get_template("alpaca")
