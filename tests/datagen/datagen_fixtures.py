"""Helpers for the data-pipeline tests: a tiny COCO dataset, a scripted OpenAI-compatible server, a tiny GGUF.

(A uniquely named module, not `conftest`: several test folders have a conftest.py, so `from conftest import`
would pick whichever pytest loaded last. `tests/datagen/conftest.py` re-exports the fixtures.)

- `coco_dir`: six 32 px images with COCO captions + instances files. Each image's first caption starts
  with a behaviour tag ("good:", "malformed:", "flaky429:", ...) that the scripted server acts on.
- `ScriptedServer`: a real `http.server` on 127.0.0.1 in a thread, speaking `POST /v1/chat/completions`.
  It answers from the request alone (so runs are reproducible), fails on purpose as the tag says
  (429 with Retry-After, 500, a non-JSON body, malformed or forbidden content) and counts requests.
- `tiny_gguf`: a random 2-layer LLaMA with a SentencePiece vocabulary trained on the spot, written with
  gguf-py (tech memo §3, §8) and a ChatML chat template, built once per session.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image
from tiny_gguf import Vocab, write_llama_gguf

from training.datagen.prompts import SYSTEM

REPO = Path(__file__).resolve().parents[2]

TAGS = ("good", "malformed", "flaky429", "flaky500", "badjson", "mentions", "twin1", "twin2")
CAPTION = {
    "good": "a red cup on a wooden table",
    "malformed": "a dog running on the beach",
    "flaky429": "two bikes leaning on a wall",
    "flaky500": "a bowl of oranges near a window",
    "badjson": "a cat sleeping on a blue chair",
    "mentions": "a train at a small station",
    "twin1": "a lamp next to a bed",
    "twin2": "a lamp next to a bed",
}


def make_coco(root: Path, tags: tuple[str, ...] = TAGS, missing: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """Write images/ and captions.json + instances.json under `root`; images in `missing` are not created."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, caps, boxes = [], [], []
    for i, tag in enumerate(tags, start=1):
        name = f"images/{i:012d}.jpg"
        if tag not in missing:
            Image.new("RGB", (40, 20), (i * 20, 100, 200)).save(root / name)
        images.append({"id": i, "file_name": name, "width": 40, "height": 20})
        caps.append({"id": 10 * i, "image_id": i, "caption": f"{tag}: {CAPTION.get(tag, tag)}."})
        caps.append({"id": 10 * i + 1, "image_id": i, "caption": f"A photo, {CAPTION.get(tag, tag)}."})
        boxes.append({"id": 100 * i, "image_id": i, "category_id": 1, "bbox": [4, 2, 10, 8], "area": 80, "iscrowd": 0})
        boxes.append({"id": 100 * i + 1, "image_id": i, "category_id": 2, "bbox": [20, 0, 20, 20], "area": 400,
                      "iscrowd": 0})
    cats = [{"id": 1, "name": "cup"}, {"id": 2, "name": "table"}]
    cap_path, inst_path = root / "captions.json", root / "instances.json"
    cap_path.write_text(json.dumps({"images": images, "annotations": caps}))
    inst_path.write_text(json.dumps({"images": images, "annotations": boxes, "categories": cats}))
    return cap_path, inst_path


@pytest.fixture
def coco_dir(tmp_path: Path) -> Path:
    make_coco(tmp_path)
    return tmp_path


def good_response(rtype: str, subject: str) -> str:
    if rtype == "conversation":
        return (f"Q: What does the image show?\nA: It shows {subject}.\n"
                f"Q: Where is the main object?\nA: The main object, {subject}, is near the left side.")
    if rtype == "complex_reasoning":
        return (f"Q: What might someone do next in this scene?\nA: Given {subject}, someone might walk over "
                "and use it, because it is within easy reach.")
    return (f"The image shows {subject}. The main object sits on the left side of the frame, and a larger "
            "object fills the right half of the picture, giving the scene a calm and simple look.")


class ScriptedServer:
    """OpenAI chat-completions on 127.0.0.1; behaviour chosen by the image's caption tag."""

    def __init__(self, delay: float = 0.0, status_for_all: int | None = None) -> None:
        self.delay, self.status_for_all = delay, status_for_all
        self.requests: Counter[tuple[str, str]] = Counter()
        self.times: list[float] = []  # monotonic arrival time of each request
        self.auth: set[str] = set()
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep pytest output clean
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.auth.add(self.headers.get("Authorization", ""))
                status, headers, payload = server.respond(self.path, body)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client was killed mid-request (the resume test does that on purpose)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def respond(self, path: str, body: dict) -> tuple[int, dict, object]:
        if path != "/v1/chat/completions":
            return 404, {}, {"error": "not found"}
        if self.status_for_all:
            return self.status_for_all, {}, {"error": {"message": "invalid api key"}}
        rtype = next(t for t, s in SYSTEM.items() if body["messages"][0]["content"] == s)
        context = body["messages"][-1]["content"]
        tag, _, rest = context.split("\n")[0].partition(": ")
        subject = rest.rstrip(".")
        with self.lock:
            self.times.append(time.monotonic())
            self.requests[(tag, rtype)] += 1
            n = self.requests[(tag, rtype)]
        if self.delay:
            time.sleep(self.delay)
        if tag == "slow" and n == 1:
            time.sleep(2.0)  # longer than the client's --timeout: the client retries
        if tag == "flaky429" and n == 1:
            return 429, {"Retry-After": "0"}, {"error": "slow down"}
        if tag == "flaky500" and n == 1:
            return 500, {}, {"error": "boom"}
        if tag == "badjson" and n == 1:
            return 200, {"Content-Type": "application/json"}, b"{not json"
        text = good_response(rtype, subject)
        if tag == "malformed":
            text = {"conversation": "Sure! Here is a conversation about the picture.",
                    "complex_reasoning": "Q: Why?\nQ: What next?",
                    "detail": "A dog."}[rtype]
        elif tag == "mentions":
            text = text.replace("The main object", "The bounding box").replace("It shows", "The caption says")
        elif tag.startswith("twin"):
            text = good_response(rtype, "a lamp next to a bed")
        return 200, {"Content-Type": "application/json"}, {
            "id": "x", "object": "chat.completion", "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        }

    def __enter__(self) -> ScriptedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    with ScriptedServer() as s:
        yield s


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def build_tiny_gguf(out_dir: Path, chat_template: str = CHATML) -> Path:
    """A random LLaMA (2 layers, 64 wide, GQA 4/2) with a 400-piece SentencePiece BPE vocabulary."""
    import sentencepiece as spm

    from training.datagen.prompts import EXAMPLES

    corpus = out_dir / "corpus.txt"
    text = "\n".join(list(SYSTEM.values()) + [e for v in EXAMPLES.values() for e in v] + list(CAPTION.values()))
    corpus.write_text("\n".join([text] * 3))
    prefix = out_dir / "tok"
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(prefix), vocab_size=400, model_type="bpe", byte_fallback=True,
        character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, normalization_rule_name="identity",
        remove_extra_whitespaces=False, split_digits=True, allow_whitespace_only_pieces=True, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=str(prefix) + ".model")
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(float(sp.get_score(i)))
        types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 1)
    return write_llama_gguf(out_dir / "tiny.gguf", Vocab(tokens, scores, types), name="tiny-datagen-test", ctx=4096,
                            weight_std=0.05, chat_template=chat_template)


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gguf(tmp_path_factory.mktemp("gguf"))


# Mistral-Instruct's template: it raises on a system message. The leading comment keeps llama-cpp-python from
# recognising it and substituting its own built-in formatter, so the Jinja template really runs.
NO_SYSTEM = ("{# tiny #}{{ bos_token }}{% for message in messages %}"
             "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
             "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
             "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
             "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token + ' ' }}"
             "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")


@pytest.fixture(scope="session")
def tiny_gguf_no_system(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gguf(tmp_path_factory.mktemp("gguf-nosys"), NO_SYSTEM)
