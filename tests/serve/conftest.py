"""Fixtures for the server tests: real `python -m serve` processes on free 127.0.0.1 ports (servehelpers.py).

- `demo_server` (module): the shipped demo bundle (it knows coloured shapes, so answers can be checked), with an API
  key, `--allow-files` on a temporary directory and a 1 MiB body limit.
- `long_server` (module): a tiny random bundle (tests/runtime/tinyllava.py) with a 4,096-token context, whose greedy
  answer to anything runs past 3,900 tokens; `--queue 1`. For what needs a long answer, not a right one.
- `demo_reference`: the demo model opened in this process, to compute the answers the server must give.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from servehelpers import DEMO, KEY, REPO, SHAPES, Server, start_server

sys.path.insert(0, str(REPO / "tests" / "runtime"))  # tinyllava, the test-only bundle builder
sys.path.insert(0, str(REPO / "tests"))  # tiny_gguf, which tinyllava imports


@pytest.fixture(scope="module")
def allowed_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("allowed")
    (d / "shapes.png").write_bytes(SHAPES.read_bytes())
    return d


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory, allowed_dir) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("demo-server"), DEMO, "--allow-files", str(allowed_dir),
                          "--max-body-mb", "1", key=KEY)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def long_bundle(tmp_path_factory) -> Path:
    import tinyllava

    return tinyllava.build_bundle(tmp_path_factory.mktemp("long") / "tiny", ctx=4096)


@pytest.fixture(scope="module")
def long_server(tmp_path_factory, long_bundle) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("long-server"), long_bundle, "--queue", "1")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def demo_reference(tmp_path_factory):
    """`answer(turns_so_far_questions, ...)`: greedy answers of an in-process ChatSession on the demo model."""
    from llava_local import ChatSession, GenerationConfig, RuntimeConfig, open_model
    from llava_local.events import Finished

    with pytest.MonkeyPatch.context() as mp:  # the model's embedding cache lives in its own home
        mp.setenv("LLAVA_LOCAL_HOME", str(tmp_path_factory.mktemp("ref-home")))
        model = open_model(DEMO, RuntimeConfig(device="cpu", n_threads=1))

    def answers(questions: list[str], image: Path, max_tokens: int = 64) -> list[str]:
        """The answers to a conversation: the image goes with the first question."""
        s = ChatSession(model, GenerationConfig(temperature=0, max_tokens=max_tokens))
        out = []
        for i, q in enumerate(questions):
            fin = [e for e in s.ask(q, images=[image] if i == 0 else []) if isinstance(e, Finished)][0]
            out.append(fin.text)
        return out

    yield answers
    model.close()
