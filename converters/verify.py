"""Parity of a converted bundle against the torch checkpoint it came from.

Contract: `verify(ckpt, work_dir, vision_files, llm_files, ...) -> dict` (the manifest's parity report) runs:
- vision: every ONNX variant vs transformers' feature path (`torch_ref.reference_features`) on a few generated
  images (square and non-square, through `llava_local.preprocess`), batched so the dynamic batch axis is used:
  max |Δ| and mean per-token cosine.
- tokenizer: prompt ids from the HF tokenizer vs llama.cpp over the GGUF vocab, chunk by chunk around images
  (BOS on the first chunk only, special tokens parsed in both), for every GGUF; gated on the image prompt.
  Multi-turn text (with "</s>" inside) is reported separately (`text_prompt_ids_equal`): transformers'
  non-legacy LLaMA tokenizers drop the "▁" after a special token where llama.cpp and LLaMA keep it, so a
  llava-hf tokenizer with `legacy: false` differs there.
- LLM: top-1 agreement and max |Δ| of llama.cpp logits vs `LlamaForCausalLM` on text prompts.
- answer: the greedy continuation of image + prompt, `n_tokens` long with EOS suppressed on both sides
  (transformers `generate(min_new_tokens=n)`; EOS logit masked in llama.cpp). The bundle side takes its image
  rows from the fp32 ONNX graph, never from torch.
- runtime: with `runtime_quants`, the work dir (which then holds a provisional manifest) is opened with the
  runtime's public API (`open_model`, `ChatSession`, temperature 0) and its answer text, which stops at EOS,
  is compared with transformers' greedy `generate` on the same PNG bytes and prompt.
`failures(report)` lists what breaks the gates: fp32/fp16 vision, tokenizer ids, and f32/f16 GGUF logits and
answers. Quantized GGUFs and int8 vision are measured and reported, not gated here (int8 has its own gate).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llava_local.preprocess import preprocess
from llava_local.templates import Turn, get_template, text_chunks

from .layouts import Checkpoint
from .llama_runner import LlamaRunner
from .vision_onnx import cosine, run_onnx


@dataclass(frozen=True)
class Gates:
    vision_fp32_max_abs: float = 1e-3  # relative to max(1, max|ref|)
    vision_fp32_cosine: float = 0.9999
    vision_fp16_cosine: float = 0.999
    llm_top1: float = 0.95  # f32 / f16 GGUF top-1 agreement with torch
    answer_quants: tuple[str, ...] = ("f32", "f16")  # greedy answers must equal torch's for these


IMAGE_PROMPT = "What is in the image? Describe it."
TEXT_PROMPTS = (
    [Turn("user", "What colour is the circle on the left?")],
    [Turn("user", "How many shapes are there?"), Turn("assistant", "There are 3 shapes."),
     Turn("user", "Which one is the biggest, and where is it?")],
    [Turn("user", "Describe a red square, a blue star and 12 small dots.")],
)


def sample_images(n: int = 3, seed: int = 0) -> list[Any]:
    """Deterministic PIL images: noise (wide), a gradient (tall), and shapes on a square canvas."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (48, 72, 3), dtype=np.uint8))]
    grad = np.linspace(0, 255, 90, dtype=np.float32)[:, None, None] * np.array([1.0, 0.5, 0.2], np.float32)
    images.append(Image.fromarray(np.broadcast_to(grad, (90, 40, 3)).astype(np.uint8)))
    square = Image.new("RGB", (64, 64), (255, 255, 255))
    draw = ImageDraw.Draw(square)
    draw.ellipse((4, 4, 30, 30), fill=(220, 30, 30))
    draw.rectangle((34, 30, 60, 58), fill=(30, 60, 220))
    images.append(square)
    return images[:n] if n <= len(images) else images + [images[i % 3].rotate(90 * i) for i in range(3, n)]


def _hf_ids(tok: Any, text: str, add_bos: bool) -> list[int]:
    return list(tok(text, add_special_tokens=add_bos).input_ids)


def _prompt_chunks(template: str, prompt: str, n_images: int = 1) -> list[str]:
    pieces = get_template(template).render([Turn("user", prompt, n_images=n_images)])
    return text_chunks(pieces)


def vision_report(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    return {"max_abs": float(np.abs(out - ref).max()), "cosine": cosine(out, ref),
            "ref_max_abs": float(np.abs(ref).max())}


def verify(
    ckpt: Checkpoint,
    work_dir: Path,
    vision_files: dict[str, str],
    llm_files: dict[str, str],
    *,
    n_tokens: int = 16,
    n_images: int = 3,
    gates: Gates = Gates(),
    progress: Any = None,
    runtime_quants: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Measure every file of the bundle being built in `work_dir`; returns the parity report."""
    import torch
    from transformers import AutoTokenizer

    from .torch_ref import build_clip, build_llm, build_projector, reference_features

    say = progress or (lambda msg: None)
    report: dict[str, Any] = {"verified": True, "gates": {k: v for k, v in gates.__dict__.items()},
                              "n_images": n_images, "n_tokens": n_tokens, "vision": {}, "llm": {}}
    pixels = np.concatenate([preprocess(img, ckpt.preprocess) for img in sample_images(n_images)])  # (B,3,S,S)
    clip, proj = build_clip(ckpt), build_projector(ckpt)
    ref = reference_features(clip, proj, torch.from_numpy(pixels), ckpt.feature_layer, ckpt.drop_cls).numpy()
    onnx_out: dict[str, np.ndarray] = {}
    for dtype, fname in vision_files.items():
        onnx_out[dtype] = run_onnx(work_dir / fname, pixels)
        report["vision"][dtype] = vision_report(ref, onnx_out[dtype])
        say(f"vision {dtype}: max|Δ| {report['vision'][dtype]['max_abs']:.2e}, "
            f"cosine {report['vision'][dtype]['cosine']:.6f}")

    tok = AutoTokenizer.from_pretrained(ckpt.tokenizer_dir)
    llm = build_llm(ckpt)
    emb = llm.get_input_embeddings()
    chunks = _prompt_chunks(ckpt.template, IMAGE_PROMPT)
    if len(chunks) != 2:
        raise ValueError(f"template {ckpt.template} did not place exactly one image")
    hf_chunks = [_hf_ids(tok, c, i == 0) for i, c in enumerate(chunks)]
    text_prompts = [get_template(ckpt.template).to_string(get_template(ckpt.template).render(t)) for t in TEXT_PROMPTS]
    text_prompts = [p for p in text_prompts if p.strip()] or [t[0].text for t in TEXT_PROMPTS]
    hf_text = [_hf_ids(tok, p, True) for p in text_prompts]

    # torch: text logits and the greedy answer over the fp32 reference features of the first image.
    with torch.no_grad():
        ref_logits = [llm(torch.tensor([ids])).logits[0].numpy() for ids in hf_text]
        feats = torch.from_numpy(ref[:1])
        embeds = torch.cat([emb(torch.tensor([hf_chunks[0]])), feats, emb(torch.tensor([hf_chunks[1]]))], 1)
        eos = tok.eos_token_id
        gen = llm.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                           max_new_tokens=n_tokens, min_new_tokens=n_tokens, do_sample=False,
                           pad_token_id=eos, eos_token_id=eos)
    torch_answer = [int(t) for t in gen[0, -n_tokens:]]
    report["torch_answer"] = torch_answer

    rows = onnx_out["fp32"][0]  # the bundle's own image rows (N, D)
    n_ctx = max(256, len(hf_chunks[0]) + len(rows) + len(hf_chunks[1]) + n_tokens + 8,
                max(len(ids) for ids in hf_text) + 8)
    for quant, fname in llm_files.items():
        with LlamaRunner(work_dir / fname, n_ctx=n_ctx, quant=quant) as run:
            ids_equal = all(run.tokenize(c, i == 0) == hf_chunks[i] for i, c in enumerate(chunks))
            text_ids_equal = all(run.tokenize(p, True) == ids for p, ids in zip(text_prompts, hf_text))
            agree, max_abs = [], 0.0
            for ids, want in zip(hf_text, ref_logits):
                run.pos = 0
                _clear(run)
                got = run.decode_tokens(ids, all_logits=True)
                agree.append((got.argmax(-1) == want.argmax(-1)).mean())
                max_abs = max(max_abs, float(np.abs(got - want).max()))
            _clear(run)
            run.pos = 0
            run.decode_tokens(hf_chunks[0])
            run.decode_embeddings(rows)
            logits = run.decode_tokens(hf_chunks[1])
            answer = []
            for _ in range(n_tokens):
                logits[run.eos] = -np.inf  # as min_new_tokens does on the torch side
                nxt = int(logits.argmax())
                answer.append(nxt)
                logits = run.decode_tokens([nxt])
        match = next((i for i, (a, b) in enumerate(zip(answer, torch_answer)) if a != b), n_tokens)
        report["llm"][quant] = {"prompt_ids_equal": ids_equal, "text_prompt_ids_equal": text_ids_equal,
                                "top1_agreement": float(np.mean(agree)),
                                "max_abs_logit": max_abs, "answer": answer, "answer_match_tokens": match}
        say(f"llm {quant}: top-1 {np.mean(agree):.3f}, max|Δlogit| {max_abs:.3g}, answer {match}/{n_tokens} "
            f"tokens equal, prompt ids {'equal' if ids_equal else 'DIFFER'}")
    if runtime_quants:
        _runtime_answers(report, work_dir, runtime_quants, llm, tok, emb, clip, proj, ckpt, say)
    return report


def _runtime_answers(report: dict[str, Any], bundle: Path, quants: list[str], llm: Any, tok: Any, emb: Any,
                     clip: Any, proj: Any, ckpt: Checkpoint, say: Any, max_tokens: int = 12) -> None:
    """The bundle through the runtime's public API (`open_model`, `ChatSession`, greedy, stops at EOS) vs
    transformers `generate` on the same image bytes and prompt; text compared after decoding."""
    import io

    import torch

    from llava_local import ChatSession, GenerationConfig, RuntimeConfig, open_model
    from llava_local.events import TextChunk

    from .torch_ref import reference_features

    buf = io.BytesIO()
    sample_images(3)[2].save(buf, format="PNG")
    png = buf.getvalue()
    pixels = torch.from_numpy(preprocess(png, ckpt.preprocess))
    feats = reference_features(clip, proj, pixels, ckpt.feature_layer, ckpt.drop_cls)
    chunks = _prompt_chunks(ckpt.template, IMAGE_PROMPT)
    ids = [_hf_ids(tok, c, i == 0) for i, c in enumerate(chunks)]
    with torch.no_grad():
        embeds = torch.cat([emb(torch.tensor([ids[0]])), feats, emb(torch.tensor([ids[1]]))], 1)
        gen = llm.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                           max_new_tokens=max_tokens, do_sample=False, pad_token_id=tok.eos_token_id,
                           eos_token_id=tok.eos_token_id)
    want = tok.decode(gen[0], skip_special_tokens=True).strip()
    report["torch_text"] = want
    for quant in quants:
        cfg = RuntimeConfig(device="cpu", quant=quant, vision_dtype="fp32", embedding_cache=False)
        with open_model(str(bundle), cfg) as model:
            session = ChatSession(model, generation=GenerationConfig(temperature=0, max_tokens=max_tokens))
            got = "".join(e.text for e in session.ask(IMAGE_PROMPT, images=[png]) if isinstance(e, TextChunk))
        report["llm"][quant]["runtime_text"] = got.strip()
        report["llm"][quant]["runtime_answer_equal"] = got.strip() == want
        say(f"runtime {quant}: answer {'equals' if got.strip() == want else 'DIFFERS from'} transformers' "
            f"({len(want)} chars)")


def _clear(run: LlamaRunner) -> None:
    import llama_cpp

    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(run.ctx), True)


def failures(report: dict[str, Any], gates: Gates = Gates()) -> list[str]:
    """One line per broken gate (empty when the bundle is good or verification was skipped)."""
    if not report.get("verified"):
        return []
    out = []
    for dtype, r in report.get("vision", {}).items():
        if dtype == "fp32":
            limit = gates.vision_fp32_max_abs * max(1.0, r["ref_max_abs"])
            if r["max_abs"] > limit or r["cosine"] < gates.vision_fp32_cosine:
                out.append(f"vision fp32 differs from torch (max|Δ| {r['max_abs']:.2e}, cosine {r['cosine']:.6f})")
        elif dtype == "fp16" and r["cosine"] < gates.vision_fp16_cosine:
            out.append(f"vision fp16 cosine {r['cosine']:.5f} < {gates.vision_fp16_cosine}")
    for quant, r in report.get("llm", {}).items():
        if not r["prompt_ids_equal"]:
            out.append(f"llm {quant}: llama.cpp tokenizes prompts differently from the HF tokenizer")
        if quant in gates.answer_quants:
            if r["top1_agreement"] < gates.llm_top1:
                out.append(f"llm {quant}: top-1 agreement {r['top1_agreement']:.3f} < {gates.llm_top1}")
            if r["answer_match_tokens"] < report["n_tokens"]:
                out.append(f"llm {quant}: greedy answer diverges from torch at token {r['answer_match_tokens']}")
            if r.get("runtime_answer_equal") is False:
                out.append(f"llm {quant}: the runtime's answer differs from transformers'")
    return out
