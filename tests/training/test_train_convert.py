"""The tiny stage-2 output converts with `llava-local convert` as is, and the bundle's greedy answer (ONNX
vision + llama.cpp through the runtime's ChatSession) equals transformers' greedy answer on the same weights."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("llama_cpp")
pytest.importorskip("onnxruntime")

from llava_local.cli import main  # noqa: E402
from llava_local.preprocess import PreprocessConfig, preprocess  # noqa: E402
from llava_local.templates import Turn, get_template  # noqa: E402
from training.dataset import encode  # noqa: E402
from training.model import load_tokenizer  # noqa: E402

QUESTION = "What colour is the shape?"


def _torch_greedy(out_dir, image, max_new: int) -> str:
    from transformers import LlavaForConditionalGeneration

    hf = LlavaForConditionalGeneration.from_pretrained(str(out_dir), dtype=torch.float32).eval()
    tok = load_tokenizer(str(out_dir))
    meta = json.loads((out_dir / "llava_local.json").read_text())
    pieces = get_template(meta["template"]).render([Turn("user", QUESTION, 1)])
    ids, _ = encode(pieces, tok, hf.config.image_token_id, hf.config.image_seq_length)
    pixels = torch.from_numpy(preprocess(image, PreprocessConfig.from_dict(meta["preprocess"])))
    new: list[int] = []
    with torch.no_grad():
        for _ in range(max_new):
            x = torch.tensor([ids + new])
            logits = hf(input_ids=x, attention_mask=torch.ones_like(x), pixel_values=pixels).logits[0, -1]
            t = int(logits.argmax())
            if t == tok.eos_token_id:
                break
            new.append(t)
    return tok.decode(new, skip_special_tokens=True)


def test_training_output_converts_and_bundle_answers_like_torch(stage2_out, tiny_data, tmp_path):
    from llava_local import ChatSession, GenerationConfig, RuntimeConfig, open_model
    from llava_local.events import TextChunk

    bundle = tmp_path / "bundle"
    assert main(["convert", str(stage2_out), "-o", str(bundle), "--quant", "f32", "--no-verify", "--quiet"]) == 0
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["template"] == "vicuna_v1" and manifest["vision"]["tokens_per_image"] == 16
    image = tiny_data[1].parent / "img000.png"
    expected = _torch_greedy(stage2_out, image, max_new=12)
    assert expected.strip(), "the trained tiny model answers something"
    model = open_model(str(bundle), RuntimeConfig(device="cpu"))
    session = ChatSession(model, generation=GenerationConfig(temperature=0, max_tokens=12))
    got = "".join(e.text for e in session.ask(QUESTION, images=[str(image)]) if isinstance(e, TextChunk))
    assert got.strip() == expected.strip()
