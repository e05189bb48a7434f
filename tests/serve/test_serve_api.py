"""`llava-local serve` end to end: a real server process with the demo model, driven by the official `openai` client.

The answers are checked twice: against the in-process `ChatSession` greedy answer (the server must not change what
the model says) and against the scene the image was rendered from (`training.demo.evaluate.score`), so a server that
dropped the image or garbled the prompt fails. KV reuse is proven with the runtime's own counters
(`rows_decoded`: every row sent to llama_decode; `vision_images_encoded`: every vision-encoder run).
"""

from __future__ import annotations

import threading

import httpx
import openai
import pytest
from servehelpers import SHAPES, data_uri

from training.demo.evaluate import eval_set, score

ITEMS = eval_set(5, 4242)  # held-out scenes (the demo model trains on world 0)
# the fifth scene's questions: the shipped model answers its colour, count and description right (the tests check
# what they rely on first), and its description has a ":" for the stop-string test
SCENE = [it for it in ITEMS if it.scene.key == ITEMS[-1].scene.key]
COLOUR, DESCRIPTION, COUNT = (next(it for it in SCENE if it.qa.qtype == t) for t in ("colour", "description", "count"))
GREEDY = {"temperature": 0, "max_tokens": 64}


def _ask(text: str, png: bytes) -> dict:
    return {"role": "user", "content": [{"type": "text", "text": text},
                                        {"type": "image_url", "image_url": {"url": data_uri(png)}}]}


def test_models_health_and_api_key(demo_server):
    client = demo_server.client()
    assert [m.id for m in client.models.list().data] == ["llava-local-tiny"]
    health = httpx.get(f"{demo_server.url}/health").json()  # no key needed
    assert health["status"] == "ok" and health["model"] == "llava-local-tiny"

    wrong = demo_server.client(api_key="not-the-key")
    with pytest.raises(openai.AuthenticationError) as e:
        wrong.chat.completions.create(model="llava-local-tiny", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 401 and e.value.code == "invalid_api_key"
    r = httpx.get(f"{demo_server.url}/v1/models")  # no key at all
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


def test_image_answers_stream_and_not(demo_server, demo_reference):
    client = demo_server.client()
    for item in (COLOUR, DESCRIPTION):
        (expected,) = demo_reference([item.prompt], item.png)
        assert score(item.qa, expected, item.scene), (item.qa, expected)  # the question is one the model gets right
        r = client.chat.completions.create(model="llava-local-tiny", messages=[_ask(item.prompt, item.png)], **GREEDY)
        assert r.choices[0].message.content == expected and r.choices[0].finish_reason == "stop"
        assert r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 9  # 9 image rows + the text

        stream = client.chat.completions.create(model="llava-local-tiny", messages=[_ask(item.prompt, item.png)],
                                                stream=True, stream_options={"include_usage": True}, **GREEDY)
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == expected
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
        assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens  # the usage chunk comes last


def test_three_turns_resending_history_reuse_the_cache(demo_server, demo_reference):
    questions = [DESCRIPTION.prompt, COLOUR.prompt, COUNT.prompt]
    expected = demo_reference(questions, DESCRIPTION.png)
    client = demo_server.client()
    messages: list[dict] = []
    previous_total = 0
    for turn, question in enumerate(questions):
        messages.append(_ask(question, DESCRIPTION.png) if turn == 0 else {"role": "user", "content": question})
        before = demo_server.stats()
        r = client.chat.completions.create(model="llava-local-tiny", messages=messages, **GREEDY)
        after = demo_server.stats()
        answer = r.choices[0].message.content
        assert answer == expected[turn], turn
        encoded = after["engine"]["vision_images_encoded"] - before["engine"]["vision_images_encoded"]
        decoded = after["engine"]["rows_decoded"] - before["engine"]["rows_decoded"]
        if turn == 0:
            assert score(DESCRIPTION.qa, answer, DESCRIPTION.scene)
            assert encoded <= 1  # 0 when an earlier test already put this image in the embedding cache
        else:
            # The image was neither encoded again nor prefilled again: everything up to the last answer was reused
            # (the resent answer re-tokenizes to the same ids), and only the new question and the answer were decoded.
            assert encoded == 0 and after["last"]["images_encoded"] == 0
            assert r.usage.prompt_tokens_details.cached_tokens >= previous_total - 1
            assert after["last"]["prompt_reused"] == r.usage.prompt_tokens_details.cached_tokens
            new = r.usage.prompt_tokens - r.usage.prompt_tokens_details.cached_tokens
            assert new < 40 and decoded <= new + r.usage.completion_tokens
        previous_total = r.usage.prompt_tokens + r.usage.completion_tokens
        messages.append({"role": "assistant", "content": answer.strip()})  # clients often strip what they got


def test_files_only_inside_allow_files(demo_server, allowed_dir, tmp_path, demo_reference):
    (expected,) = demo_reference(["What is in this image?"], SHAPES)
    outside = tmp_path / "outside.png"
    outside.write_bytes(SHAPES.read_bytes())
    (allowed_dir / "link.png").symlink_to(outside)
    client = demo_server.client()

    def ask(url: str):
        return client.chat.completions.create(model="m", messages=[{"role": "user", "content": [
            {"type": "text", "text": "What is in this image?"}, {"type": "image_url", "image_url": {"url": url}}]}],
            **GREEDY)

    for url in ("shapes.png", str(allowed_dir / "shapes.png"), f"file://{allowed_dir / 'shapes.png'}"):
        assert ask(url).choices[0].message.content == expected, url
    for url in (str(outside), "../outside.png", f"{allowed_dir}/../{tmp_path.name}/outside.png", "link.png",
                f"file://{outside}"):
        with pytest.raises(openai.PermissionDeniedError) as e:
            ask(url)
        assert e.value.status_code == 403 and e.value.code == "path_not_allowed", url
    with pytest.raises(openai.BadRequestError) as e:
        ask("https://example.com/cat.png")  # never fetched
    assert "offline" in e.value.message


def test_two_clients_at_once(demo_server, demo_reference):
    (long_expected,) = demo_reference([DESCRIPTION.prompt], DESCRIPTION.png)
    (short_expected,) = demo_reference([COLOUR.prompt], COLOUR.png)
    results: dict[str, str] = {}
    start = threading.Barrier(2)

    def long_one() -> None:
        client = demo_server.client()
        start.wait()
        stream = client.chat.completions.create(model="m", messages=[_ask(DESCRIPTION.prompt, DESCRIPTION.png)],
                                                stream=True, **GREEDY)
        results["long"] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    def short_one() -> None:
        client = demo_server.client()
        start.wait()
        r = client.chat.completions.create(model="m", messages=[_ask(COLOUR.prompt, COLOUR.png)], **GREEDY)
        results["short"] = r.choices[0].message.content

    threads = [threading.Thread(target=f) for f in (long_one, short_one)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == {"long": long_expected, "short": short_expected}


def test_stop_strings_end_the_answer(demo_server, demo_reference):
    (full,) = demo_reference([DESCRIPTION.prompt], DESCRIPTION.png)
    assert ":" in full
    r = demo_server.client().chat.completions.create(model="m", messages=[_ask(DESCRIPTION.prompt, DESCRIPTION.png)],
                                                     stop=[":", "never"], **GREEDY)
    assert r.choices[0].message.content == full[:full.index(":")] and r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens < len(full.split())  # generation stopped there, not just the text
