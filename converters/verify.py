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
- LLM: top-1 agreement and max |Δ| of llama.cpp logits vs `LlamaForCausalLM` on text prompts; the gate reads
  `top1_agreement_ties_ok`, where positions with torch's top two within the near-tie tolerance count as agreeing.
- answer: the greedy continuation of image + prompt, `n_tokens` long with EOS suppressed on both sides
  (transformers `generate(min_new_tokens=n)`; EOS logit masked in llama.cpp). The bundle side takes its image
  rows from the fp32 ONNX graph, never from torch.
- runtime: with `runtime_quants`, the work dir (which then holds a provisional manifest) is opened with the
  runtime's public API (`open_model`, `ChatSession`, temperature 0) and its answer text, which stops at EOS,
  is compared with transformers' greedy `generate` on the same PNG bytes and prompt. When the texts differ, the
  bundle's own greedy tokens (`Engine`, EOS allowed, the same ONNX rows) are decoded too: a runtime text equal
  to them, parting from torch's at a near tie, passes (`runtime_answer_ok`).
- near ties: greedy sequences of two correct implementations may part where torch's top two logits are closer
  than the format's logit error (a briefly trained model has many such spots). `divergence(...)` finds the first
  differing position (the prefixes are equal, so torch's logits there are comparable) and reports torch's top-1 /
  top-2 margin, the gap between torch's token and the bundle's token, and llama.cpp's max |Δlogit| at that step;
  `near_tie` is gap ≤ `tie_tolerance(max|Δlogit| on the text prompts)`. A near-tie divergence passes; a clear one
  fails f32/f16.
`failures(report)` lists what breaks the gates: fp32/fp16 vision, tokenizer ids, and f32/f16 GGUF logits and
answers. Quantized GGUFs and int8 vision are measured and reported, not gated here (int8 has its own gate).
llama.cpp runs through the runtime's own `llava_local.engine.Engine` (`open_engine`), with the extra CPU buffer
types `llava_local.cpuprobe` allows on this machine, as the runtime uses them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llava_local.cpuprobe import extra_buffers_ok
from llava_local.engine import Engine
from llava_local.preprocess import preprocess
from llava_local.templates import Turn, get_template, text_chunks

from .layouts import Checkpoint
from .vision_onnx import cosine, run_onnx


@dataclass(frozen=True)
class Gates:
    vision_fp32_max_abs: float = 1e-3  # relative to max(1, max|ref|)
    vision_fp32_cosine: float = 0.9999
    vision_fp16_cosine: float = 0.999
    llm_top1: float = 0.95  # f32 / f16 GGUF top-1 agreement with torch
    answer_quants: tuple[str, ...] = ("f32", "f16")  # greedy answers must equal torch's for these...
    # ...unless they part at a near tie: torch's logit gap between its token and the bundle's token at the first
    # divergence is within the format's measured error, tolerance = clip(factor × max|Δlogit|, floor, cap) logits.
    near_tie_factor: float = 2.0
    near_tie_floor: float = 0.01
    near_tie_cap: float = 0.5  # a larger measured error is a broken file, not a tie (top-1 gates catch it too)


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


def sample_pixels(cfg: Any, n: int = 3, seed: int = 0) -> np.ndarray:
    """`sample_images` through a bundle's preprocessing (`PreprocessConfig`): float32 (n, 3, S, S)."""
    return np.concatenate([preprocess(img, cfg) for img in sample_images(n, seed)])


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
    pixels = sample_pixels(ckpt.preprocess, n_images)  # (B,3,S,S)
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
                           pad_token_id=eos, eos_token_id=eos, output_logits=True, return_dict_in_generate=True)
    torch_answer = [int(t) for t in gen.sequences[0, -n_tokens:]]
    torch_steps = _masked(np.stack([x[0].float().numpy() for x in gen.logits]), eos)  # (n_tokens, V), raw logits
    report["torch_answer"] = torch_answer

    rows = onnx_out["fp32"][0]  # the bundle's own image rows (N, D)
    n_ctx = max(256, len(hf_chunks[0]) + len(rows) + len(hf_chunks[1]) + n_tokens + 8,
                max(len(ids) for ids in hf_text) + 8)
    for quant, fname in llm_files.items():
        with open_engine(work_dir / fname, quant, n_ctx) as run:
            ids_equal = all(run.tokenize(c, i == 0) == hf_chunks[i] for i, c in enumerate(chunks))
            text_ids_equal = all(run.tokenize(p, True) == ids for p, ids in zip(text_prompts, hf_text))
            agree, max_abs, pairs = [], 0.0, []
            for ids, want in zip(hf_text, ref_logits):
                run.clear()
                got = run.decode_tokens(ids, logits="all")
                agree.append((got.argmax(-1) == want.argmax(-1)).mean())
                max_abs = max(max_abs, float(np.abs(got - want).max()))
                pairs.append((got, want))
            agree_ties = [top1_outside_ties(got, want, tie_tolerance(max_abs, gates)) for got, want in pairs]
            run.clear()
            # EOS suppressed, as min_new_tokens does on the torch side
            answer, steps = _greedy_answer(run, hf_chunks, rows, n_tokens, suppress_eos=True)
        div = divergence(answer, torch_answer, torch_steps, steps, tie_tolerance(max_abs, gates))
        match = div["position"] if div else n_tokens
        report["llm"][quant] = {"prompt_ids_equal": ids_equal, "text_prompt_ids_equal": text_ids_equal,
                                "top1_agreement": float(np.mean(agree)),
                                "top1_agreement_ties_ok": float(np.mean(agree_ties)),
                                "max_abs_logit": max_abs, "answer": answer, "answer_match_tokens": match}
        if div:
            report["llm"][quant]["divergence"] = div
        tie = (f" (near tie at {match}: torch margin {div['gap']:.3g} ≤ {div['tolerance']:.3g})"
               if div and div["near_tie"] else "")
        say(f"llm {quant}: top-1 {np.mean(agree):.3f}, max|Δlogit| {max_abs:.3g}, answer {match}/{n_tokens} "
            f"tokens equal{tie}, prompt ids {'equal' if ids_equal else 'DIFFER'}")
    if runtime_quants:
        _runtime_answers(report, work_dir, runtime_quants, llm, tok, emb, clip, proj, ckpt, say,
                         rows_of=lambda px: run_onnx(work_dir / vision_files["fp32"], px), gates=gates,
                         llm_files=llm_files)
    return report


def open_engine(gguf: Path, quant: str, n_ctx: int) -> Engine:
    """The runtime's llama.cpp engine on one GGUF of the bundle being built, CPU only, with the extra buffer types
    `cpuprobe.extra_buffers_ok` allows for this machine and quant (probed once, cached), as `open_model` does."""
    return Engine(gguf, n_ctx=n_ctx, gpu=False, extra_buffers=extra_buffers_ok(gguf, quant))


def _masked(logits: np.ndarray, token: int | None) -> np.ndarray:
    """A copy of `logits` (..., V) with `token` at -inf (EOS while it is suppressed)."""
    out = np.array(logits, dtype=np.float32, copy=True)
    if token is not None and 0 <= token < out.shape[-1]:
        out[..., token] = -np.inf
    return out


def tie_tolerance(max_abs_logit: float, gates: Gates = Gates()) -> float:
    """How close two logits may be for a greedy split to count as a near tie, given the format's measured error."""
    return float(min(max(gates.near_tie_factor * max_abs_logit, gates.near_tie_floor), gates.near_tie_cap))


def top1_outside_ties(got: np.ndarray, want: np.ndarray, tolerance: float) -> float:
    """Top-1 agreement of (n, V) logits where a position whose torch logits nearly tie (torch's top-1 minus its
    logit of llama.cpp's top-1 ≤ `tolerance`) counts as agreeing."""
    g, w = got.argmax(-1), want.argmax(-1)
    rows = np.arange(len(w))
    gap = want[rows, w] - want[rows, g]
    return float(((g == w) | (gap <= tolerance)).mean())


def divergence(bundle: list[int], reference: list[int], ref_logits: np.ndarray, bundle_logits: np.ndarray | None,
               tolerance: float) -> dict[str, Any] | None:
    """Where two greedy sequences first differ, and whether torch nearly tied there; None if they never differ.

    `ref_logits[i]` / `bundle_logits[i]` (V,) are the logits each side chose token i from (EOS already masked
    where it was suppressed). Up to the first differing position both sides saw the same tokens, so their logits
    at that position are comparable; past it nothing is. A sequence that ends early (EOS) differs where the other
    goes on. Returns position, both tokens, torch's top-1/top-2 `margin`, the `gap` between torch's logit of its
    own token and of the bundle's token (≥ margin; equal when the bundle took torch's runner-up), llama.cpp's
    `step_max_abs_logit` there, `tolerance` and `near_tie` (gap ≤ tolerance).
    """
    n = min(len(bundle), len(reference))
    pos = next((i for i in range(n) if bundle[i] != reference[i]), None)
    if pos is None:
        if len(bundle) == len(reference):
            return None
        pos = n
    if pos >= len(ref_logits) or pos >= len(bundle) or pos >= len(reference):
        # one side stopped (EOS) and the other has no logits recorded past it: nothing to weigh, a real difference
        return {"position": pos, "bundle_token": bundle[pos] if pos < len(bundle) else None,
                "torch_token": reference[pos] if pos < len(reference) else None, "margin": None, "gap": None,
                "step_max_abs_logit": None, "tolerance": tolerance, "near_tie": False}
    ref = np.asarray(ref_logits[pos], dtype=np.float64)
    top2 = np.sort(ref[np.isfinite(ref)])[-2:]
    margin = float(top2[-1] - top2[0]) if len(top2) == 2 else float("inf")
    gap = float(ref[reference[pos]] - ref[bundle[pos]])
    step = None
    if bundle_logits is not None and pos < len(bundle_logits):
        both = np.isfinite(ref) & np.isfinite(bundle_logits[pos])
        step = float(np.abs(ref[both] - bundle_logits[pos][both]).max())
    return {"position": pos, "bundle_token": int(bundle[pos]), "torch_token": int(reference[pos]),
            "margin": margin, "gap": gap if np.isfinite(gap) else None, "step_max_abs_logit": step,
            "tolerance": tolerance, "near_tie": bool(np.isfinite(gap) and gap <= tolerance)}


def _runtime_answers(report: dict[str, Any], bundle: Path, quants: tuple[str, ...], llm: Any, tok: Any, emb: Any,
                     clip: Any, proj: Any, ckpt: Checkpoint, say: Any, rows_of: Any, gates: Gates = Gates(),
                     llm_files: dict[str, str] | None = None, max_tokens: int = 12) -> None:
    """The bundle through the runtime's public API (`open_model`, `ChatSession`, greedy, stops at EOS) vs
    transformers `generate` on the same image bytes and prompt.

    `runtime_answer_equal`: the runtime's text equals the HF tokenizer's decoding of torch's tokens.
    `runtime_answer_ok` (gated): the runtime's text equals torch's tokens rendered the runtime's way (llama.cpp
    pieces through `TextStream`: byte tokens that form invalid UTF-8 decode differently in HF's tokenizer, which
    is not a bundle error), or it equals the bundle's own greedy tokens (`Engine` on `rows_of(pixels)`, the
    fp32 ONNX rows) rendered that way and those part from torch's at a near tie."""
    import io

    import torch

    from llava_local import ChatSession, GenerationConfig, RuntimeConfig, open_model
    from llava_local.events import TextChunk

    from .torch_ref import reference_features

    buf = io.BytesIO()
    sample_images(3)[2].save(buf, format="PNG")
    png = buf.getvalue()
    pixels = preprocess(png, ckpt.preprocess)
    feats = reference_features(clip, proj, torch.from_numpy(pixels), ckpt.feature_layer, ckpt.drop_cls)
    chunks = _prompt_chunks(ckpt.template, IMAGE_PROMPT)
    ids = [_hf_ids(tok, c, i == 0) for i, c in enumerate(chunks)]
    eos = tok.eos_token_id
    with torch.no_grad():
        embeds = torch.cat([emb(torch.tensor([ids[0]])), feats, emb(torch.tensor([ids[1]]))], 1)
        gen = llm.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                           max_new_tokens=max_tokens, do_sample=False, pad_token_id=eos, eos_token_id=eos,
                           output_logits=True, return_dict_in_generate=True)
    torch_tokens = [int(t) for t in gen.sequences[0]]
    torch_steps = np.stack([x[0].float().numpy() for x in gen.logits])
    want = tok.decode(torch_tokens, skip_special_tokens=True).strip()
    report["torch_text"] = want
    stops = get_template(ckpt.template).stop_strings
    rows = None
    for quant in quants:
        cfg = RuntimeConfig(device="cpu", quant=quant, vision_dtype="fp32", embedding_cache=False)
        with open_model(str(bundle), cfg) as model:
            session = ChatSession(model, generation=GenerationConfig(temperature=0, max_tokens=max_tokens))
            got = "".join(e.text for e in session.ask(IMAGE_PROMPT, images=[png]) if isinstance(e, TextChunk))
        got = got.strip()
        r = report["llm"][quant]
        r["runtime_text"] = got
        r["runtime_answer_equal"] = r["runtime_answer_ok"] = got == want
        note = "equals"
        if got != want:
            rows = rows_of(pixels)[0] if rows is None else rows
            own, steps, texts = _greedy(bundle / (llm_files or {})[quant], quant, ids, rows, max_tokens,
                                        [torch_tokens], stops)
            torch_text, own_text = texts
            div = divergence(own, torch_tokens, torch_steps, steps, tie_tolerance(r["max_abs_logit"], gates))
            r["runtime_divergence"] = {**(div or {}), "torch_text_llama_pieces": torch_text, "bundle_text": own_text}
            if got == torch_text:
                r["runtime_answer_ok"], note = True, "equals (bytes rendered by llama.cpp's pieces)"
            elif got == own_text and div and div["near_tie"]:
                r["runtime_answer_ok"], note = True, "parts at a near tie from"
            else:
                note = "DIFFERS from"
        say(f"runtime {quant}: answer {note} transformers' ({len(want)} chars)")


def _greedy(gguf: Path, quant: str, chunks: list[list[int]], rows: np.ndarray, max_tokens: int,
            others: list[list[int]], stops: tuple[str, ...]) -> tuple[list[int], np.ndarray, list[str]]:
    """The bundle's greedy answer to chunk 0 + image rows + chunk 1, stopping after EOS (which it includes), the
    logits each token was chosen from (n, V), and the runtime's text of each of `others` and then of the answer."""
    with open_engine(gguf, quant, len(chunks[0]) + len(rows) + len(chunks[1]) + max_tokens + 8) as run:
        out, steps = _greedy_answer(run, chunks, rows, max_tokens, suppress_eos=False)
        texts = [render(run, seq, stops) for seq in [*others, out]]
    return out, steps, texts


def _greedy_answer(run: Engine, chunks: list[list[int]], rows: np.ndarray, max_tokens: int,
                   suppress_eos: bool) -> tuple[list[int], np.ndarray]:
    """Greedy tokens after chunk 0 + image rows + chunk 1, and the logits each was chosen from (n, V). With
    `suppress_eos` EOS is masked and exactly `max_tokens` come out; otherwise it stops after an end token."""
    run.decode_tokens(chunks[0], logits=False)
    run.decode_embeddings(rows)
    run.decode_tokens(chunks[1])
    logits = run.logits()
    out, steps = [], []
    for i in range(max_tokens):
        if suppress_eos:
            logits = _masked(logits, run.eos)
        steps.append(logits)
        out.append(int(logits.argmax()))
        if i == max_tokens - 1 or (not suppress_eos and run.is_eog(out[-1])):
            break
        run.decode_tokens([out[-1]])
        logits = run.logits()
    return out, np.stack(steps)


def render(run: Engine, tokens: list[int], stops: tuple[str, ...] = ()) -> str:
    """Answer tokens as the runtime shows them: llama.cpp's bytes through `TextStream` (UTF-8 with replacement,
    stop strings cut, first space dropped), up to the first end-of-generation token; stripped."""
    from llava_local.textstream import TextStream

    stream = TextStream(stops)
    for t in tokens:
        if run.is_eog(t) or stream.push(run.piece(t))[1]:
            break
    stream.flush()
    return stream.text.strip()


def _near_tie(div: dict[str, Any] | None, max_abs_logit: float, gates: Gates) -> bool:
    return bool(div and div.get("gap") is not None and div["gap"] <= tie_tolerance(max_abs_logit, gates))


def failures(report: dict[str, Any], gates: Gates = Gates()) -> list[str]:
    """One line per broken gate (empty when the bundle is good or verification was skipped)."""
    if not report.get("verified"):
        return []
    out = []
    for dtype, r in report.get("vision", {}).items():
        if dtype == "fp32":
            limit = gates.vision_fp32_max_abs * max(1.0, r["ref_max_abs"])
            if r["max_abs"] > limit or r["cosine"] < gates.vision_fp32_cosine:
                out.append(f"vision fp32 differs from the reference (max|Δ| {r['max_abs']:.2e}, "
                           f"cosine {r['cosine']:.6f})")
        elif dtype == "fp16" and r["cosine"] < gates.vision_fp16_cosine:
            out.append(f"vision fp16 cosine {r['cosine']:.5f} < {gates.vision_fp16_cosine}")
    for quant, r in report.get("llm", {}).items():
        if not r["prompt_ids_equal"]:
            out.append(f"llm {quant}: llama.cpp tokenizes prompts differently from the HF tokenizer")
        if quant in gates.answer_quants:
            top1 = r.get("top1_agreement_ties_ok", r["top1_agreement"])
            if top1 < gates.llm_top1:
                out.append(f"llm {quant}: top-1 agreement {top1:.3f} < {gates.llm_top1} (near ties excluded)")
            div = r.get("divergence")
            if r["answer_match_tokens"] < report["n_tokens"] and not _near_tie(div, r["max_abs_logit"], gates):
                gap = f" (torch margin {div['gap']:.3g})" if div and div.get("gap") is not None else ""
                out.append(f"llm {quant}: greedy answer diverges from torch at token {r['answer_match_tokens']}{gap}")
            if r.get("runtime_answer_ok", r.get("runtime_answer_equal")) is False:
                out.append(f"llm {quant}: the runtime's answer differs from transformers'")
    return out
