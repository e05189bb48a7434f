"""A tiny random LLaVA bundle built without torch, for the runtime's tests.

Contract: `build_bundle(dir, ...)` writes a valid bundle (manifest.json, vision.onnx, llm-f32.gguf) in about a
second: a LLaMA GGUF written with gguf-py from seeded numpy weights and a hand-made SentencePiece-style vocab
(specials, 256 byte tokens, printable characters, a few merges), and an ONNX "vision tower" built with
onnx.helper (patchify conv → GELU-free MLP) whose output rows have the LLM's width. Nothing here is trained; the
answers are random but deterministic, which is all the runtime tests need.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tiny_gguf import Vocab, write_llama_gguf

from llava_local.manifest import LLMSpec, Manifest, VisionSpec, file_entry, write_manifest
from llava_local.preprocess import PreprocessConfig

# Pieces after the specials and the byte tokens: single characters (SentencePiece's "▁" marks a space),
# then a few merges so that common template words become one token. Scores rank merges (higher first).
_CHARS = [chr(c) for c in range(33, 127)] + ["▁"]
_MERGES = ["▁U", "SE", "ER", "▁USER", "▁A", "SS", "IS", "TA", "NT", "▁ASSISTANT", "▁t", "he", "▁the", "▁a", "in",
           "▁is", "▁What", "at", "▁c", "or", "▁color", "▁shape", "▁this", "?", "▁image"]


def vocab() -> tuple[list[str], list[float], list[int]]:
    """(tokens, scores, types) in llama.cpp's SPM layout: <unk>=0, <s>=1, </s>=2, then <0x00>..<0xFF>."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    scores = [0.0, 0.0, 0.0] + [0.0] * 256
    for i, c in enumerate(_CHARS):
        tokens.append(c)
        types.append(1)
        scores.append(-1000.0 - i)  # characters lose against any merge
    seen = set(tokens)
    # Build every merge from pieces that exist, adding the missing intermediate pieces first.
    for j, m in enumerate(_MERGES):
        for k in range(2, len(m) + 1):
            p = m[:k]
            if p not in seen:
                seen.add(p)
                tokens.append(p)
                types.append(1)
                scores.append(-float(j * 10 + k))
    return tokens, scores, types


def write_gguf(path: Path, *, n_embd: int = 64, ctx: int = 512, seed: int = 0) -> int:
    """A random LLaMA GGUF (F32, 2 layers, GQA 4/2) over `vocab()`. Returns n_vocab."""
    tokens, scores, types = vocab()
    write_llama_gguf(path, Vocab(tokens, scores, types), name="tinyllava-test", n_embd=n_embd, ctx=ctx, seed=seed)
    return len(tokens)


def write_vision_onnx(path: Path, *, image_size: int = 32, patch: int = 8, width: int = 48, out_dim: int = 64,
                      seed: int = 1) -> int:
    """pixel_values [B,3,S,S] → image_embeds [B, (S/patch)^2, out_dim]. Returns tokens per image."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    n_tok = (image_size // patch) ** 2
    inits = [
        numpy_helper.from_array((rng.standard_normal((width, 3, patch, patch)) * 0.1).astype(np.float32), "conv_w"),
        numpy_helper.from_array((rng.standard_normal((width, out_dim)) * 0.3).astype(np.float32), "w1"),
        numpy_helper.from_array((rng.standard_normal(out_dim) * 0.1).astype(np.float32), "b1"),
        numpy_helper.from_array((rng.standard_normal((out_dim, out_dim)) * 0.3).astype(np.float32), "w2"),
        numpy_helper.from_array(np.array([0, width, -1], np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["pixel_values", "conv_w"], ["c"], kernel_shape=[patch, patch],
                         strides=[patch, patch]),
        helper.make_node("Reshape", ["c", "shape"], ["r"]),  # [B, width, N]
        helper.make_node("Transpose", ["r"], ["p"], perm=[0, 2, 1]),  # [B, N, width]
        helper.make_node("MatMul", ["p", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Tanh", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["image_embeds"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_vision",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, image_size, image_size])],
        [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["batch", n_tok, out_dim])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return n_tok


def build_bundle(out: str | Path, *, name: str = "tiny-test", template: str = "vicuna_v1", mode: str = "pad",
                 image_size: int = 32, patch: int = 8, ctx: int = 512, seed: int = 0) -> Path:
    """Write a complete bundle directory and return it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n_embd = 64
    write_gguf(out / "llm-f32.gguf", n_embd=n_embd, ctx=ctx, seed=seed)
    n_tok = write_vision_onnx(out / "vision.onnx", image_size=image_size, patch=patch, out_dim=n_embd, seed=seed + 1)
    files = {f: file_entry(out / f) for f in ("vision.onnx", "llm-f32.gguf")}
    manifest = Manifest(
        name=name,
        preprocess=PreprocessConfig(mode=mode, size=image_size),
        vision=VisionSpec(files={"fp32": "vision.onnx"}, default="fp32", tokens_per_image=n_tok, embed_dim=n_embd),
        llm=LLMSpec(files={"f32": "llm-f32.gguf"}, default="f32", context_length=ctx),
        template=template,
        stop_strings=("</s>",),
        files=files,
        provenance={"source": "tests/runtime/tinyllava.py", "seed": seed},
    )
    write_manifest(out, manifest)
    return out


def write_png(path: Path, size: tuple[int, int] = (40, 30), seed: int = 0) -> Path:
    """A small random RGB PNG."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path
