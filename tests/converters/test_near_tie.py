"""Greedy-answer verification is tie-aware: a split at a near tie passes, a clear mismatch still fails.

The near tie is built into a real checkpoint: two lm_head rows that are equal once rounded to float16 but differ by
a quarter of a float16 ulp in float32, signed so that torch prefers the higher token id at answer step 0 by ~3e-3
logits. The f16 GGUF sees two identical rows and takes the lower id (the first maximum), so the greedy answers
part at token 0, exactly as a briefly trained model's do at near-tied top tokens.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from converters import llm_gguf
from converters.verify import Gates, divergence, failures, tie_tolerance, top1_outside_ties
from llava_local.cli import main
from llava_local.manifest import load_manifest

# --- the decision itself, on crafted logits -------------------------------------------------------------------


def _logits(values: dict[int, float], v: int = 8) -> np.ndarray:
    out = np.zeros(v, np.float32)
    for k, x in values.items():
        out[k] = x
    return out


def test_tolerance_is_clipped_multiple_of_the_measured_error():
    g = Gates()
    assert tie_tolerance(0.0) == g.near_tie_floor == 0.01
    assert tie_tolerance(0.012) == pytest.approx(0.024)
    assert tie_tolerance(3.0) == g.near_tie_cap == 0.5  # a broken file's error does not widen the tie


def test_equal_sequences_have_no_divergence():
    steps = np.stack([_logits({1: 1.0})] * 3)
    assert divergence([1, 1, 1], [1, 1, 1], steps, steps, 0.02) is None


def test_near_tie_is_reported_and_passes():
    ref = np.stack([_logits({1: 2.0}), _logits({4: 3.0, 5: 2.995, 6: 1.0})])
    got = np.stack([_logits({1: 2.001}), _logits({4: 2.999, 5: 3.0, 6: 1.0})])
    d = divergence([1, 5], [1, 4], ref, got, tie_tolerance(0.004))
    assert d is not None and d["near_tie"]
    assert (d["position"], d["torch_token"], d["bundle_token"]) == (1, 4, 5)
    assert d["margin"] == pytest.approx(0.005, abs=1e-6) and d["gap"] == pytest.approx(0.005, abs=1e-6)
    assert d["step_max_abs_logit"] == pytest.approx(0.005, abs=1e-6) and d["tolerance"] == 0.01


def test_clear_divergence_fails_even_when_the_top_two_tie():
    # torch's top two nearly tie, but the bundle took the third token: the gap to the bundle's token decides
    ref = np.stack([_logits({4: 3.0, 5: 2.999, 6: 1.0})])
    d = divergence([6], [4], ref, None, 0.02)
    assert d["margin"] == pytest.approx(0.001, abs=1e-6) and d["gap"] == pytest.approx(2.0)
    assert not d["near_tie"] and d["step_max_abs_logit"] is None


def test_early_stop_is_a_divergence():
    ref = np.stack([_logits({1: 2.0}), _logits({2: 1.0, 3: 0.999})])
    d = divergence([1, 3], [1, 2, 7], ref, None, 0.01)  # the bundle's EOS (3) where torch went on with 2
    assert d["position"] == 1 and d["near_tie"]
    d = divergence([1], [1, 2], ref, None, 0.01)  # the bundle stopped without a recorded step: never a tie
    assert d["position"] == 1 and not d["near_tie"] and d["gap"] is None


def test_top1_agreement_counts_near_ties_as_agreeing():
    want = np.stack([_logits({1: 1.0, 2: 0.999}), _logits({3: 1.0, 4: 0.5}), _logits({5: 1.0})])
    got = np.stack([_logits({2: 1.0}), _logits({4: 1.0}), _logits({5: 1.0})])
    assert top1_outside_ties(got, want, 0.01) == pytest.approx(2 / 3)
    assert top1_outside_ties(got, want, 0.0) == pytest.approx(1 / 3)


def _report(div: dict | None, match: int, max_abs: float = 0.01) -> dict:
    llm = {"prompt_ids_equal": True, "top1_agreement": 0.97, "top1_agreement_ties_ok": 1.0,
           "max_abs_logit": max_abs, "answer_match_tokens": match}
    if div is not None:
        llm["divergence"] = div
    return {"verified": True, "n_tokens": 16, "vision": {}, "llm": {"f16": llm, "q4_k_m": {**llm, "gap": 9}}}


def test_failures_read_the_divergence():
    assert failures(_report(None, 16)) == []
    assert failures(_report({"position": 3, "gap": 0.015}, 3)) == []  # ≤ 2 × 0.01
    [msg] = failures(_report({"position": 3, "gap": 0.3}, 3))
    assert msg == "llm f16: greedy answer diverges from torch at token 3 (torch margin 0.3)"
    assert failures(_report({"position": 3, "gap": None}, 3))  # nothing to weigh: fails
    assert failures(_report({"position": 3, "gap": 0.015}, 3), Gates(near_tie_factor=1.0, near_tie_floor=0.0))


# --- end to end: real conversions -------------------------------------------------------------------------------


def _step0(ckpt_dir: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """torch's final hidden state (D,) and logits (V,, EOS masked) at answer step 0 of the verifier's greedy check."""
    import torch
    from transformers import AutoTokenizer

    from converters.layouts import load_checkpoint
    from converters.torch_ref import build_clip, build_llm, build_projector, reference_features
    from converters.verify import IMAGE_PROMPT, _hf_ids, _prompt_chunks, sample_images
    from llava_local.preprocess import preprocess

    ck = load_checkpoint(ckpt_dir)
    tok = AutoTokenizer.from_pretrained(ck.tokenizer_dir)
    llm = build_llm(ck)
    emb = llm.get_input_embeddings()
    px = torch.from_numpy(preprocess(sample_images(1)[0], ck.preprocess))
    feats = reference_features(build_clip(ck), build_projector(ck), px, ck.feature_layer, ck.drop_cls)
    chunks = [_hf_ids(tok, c, i == 0) for i, c in enumerate(_prompt_chunks(ck.template, IMAGE_PROMPT))]
    with torch.no_grad():
        e = torch.cat([emb(torch.tensor([chunks[0]])), feats, emb(torch.tensor([chunks[1]]))], 1)
        out = llm(inputs_embeds=e, output_hidden_states=True)
    logits = out.logits[0, -1].numpy().copy()
    logits[tok.eos_token_id] = -np.inf
    return out.hidden_states[-1][0, -1].numpy(), logits, tok.eos_token_id


@pytest.fixture(scope="module")
def step0(tiny_hf_checkpoint):
    return _step0(tiny_hf_checkpoint)


def _runner_up(logits: np.ndarray) -> tuple[int, int]:
    """torch's top token and its best-scoring runner-up among ordinary pieces (no byte/special tokens)."""
    order = [int(t) for t in np.argsort(-logits)]
    return order[0], next(t for t in order[1:] if t > 258 and np.isfinite(logits[t]))


def _near_tie_checkpoint(src: Path, dst: Path, h: np.ndarray, logits: np.ndarray) -> tuple[int, int, float]:
    import torch
    from safetensors.torch import load_file, save_file

    top, other = _runner_up(logits)
    lo, hi = min(top, other), max(top, other)
    shutil.copytree(src, dst)
    state = load_file(str(dst / "model.safetensors"))
    w = state["language_model.lm_head.weight"].float().numpy().copy()
    base = w[top].astype(np.float16).astype(np.float32)
    ulp = np.spacing(np.abs(base).astype(np.float16)).astype(np.float32)
    w[lo], w[hi] = base, base + np.sign(h).astype(np.float32) * 0.25 * ulp
    assert (w[lo].astype(np.float16) == w[hi].astype(np.float16)).all()  # one row for the f16 GGUF
    state["language_model.lm_head.weight"] = torch.from_numpy(w)
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return lo, hi, float(h.astype(np.float64) @ (w[hi] - w[lo]))


def test_near_tie_model_converts(tiny_hf_checkpoint, step0, tmp_path, capsys):
    """Used to fail with "greedy answer diverges from torch at token 0"; now passes and says why."""
    h, logits, _ = step0
    lo, hi, margin = _near_tie_checkpoint(tiny_hf_checkpoint, tmp_path / "tie", h, logits)
    assert 0 < margin < 0.01
    out = tmp_path / "bundle"
    assert main(["convert", str(tmp_path / "tie"), "-o", str(out), "--quant", "f16"]) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert "near tie at 0" in err
    p = load_manifest(out).parity
    r = p["llm"]["f16"]
    d = r["divergence"]
    assert r["answer_match_tokens"] == d["position"] == 0 and d["near_tie"]
    assert (d["torch_token"], d["bundle_token"]) == (p["torch_answer"][0], r["answer"][0]) == (hi, lo)
    assert d["gap"] == pytest.approx(margin, rel=0.05) and d["gap"] <= d["tolerance"] == tie_tolerance(
        r["max_abs_logit"])
    assert r["top1_agreement_ties_ok"] >= r["top1_agreement"]
    # the runtime's answer is the bundle's own greedy answer, which parts from transformers' at the same kind of tie
    if not r["runtime_answer_equal"]:
        assert r["runtime_answer_ok"] and r["runtime_divergence"]["near_tie"]
        assert r["runtime_divergence"]["bundle_text"] == r["runtime_text"]
    json.dumps(p)  # the report stays JSON (no numpy scalars)


def test_clear_mismatch_in_one_gguf_tensor_fails(tiny_hf_checkpoint, step0, tmp_path, monkeypatch, capsys):
    """Swapping torch's top token and its runner-up in the GGUF's output.weight (only there) makes llama.cpp pick
    the runner-up at answer step 0, where torch's margin is clear: conversion fails, nothing is written."""
    import torch

    _, logits, _ = step0
    top, other = _runner_up(logits)
    assert logits[top] - logits[other] > Gates().near_tie_cap
    real = llm_gguf.write_gguf

    def corrupt(ckpt, path, *args, **kwargs):
        w = ckpt.llm_state["lm_head.weight"].clone()
        w[[top, other]] = w[[other, top]]
        state = {**ckpt.llm_state, "lm_head.weight": w}
        assert not torch.equal(w, ckpt.llm_state["lm_head.weight"])
        return real(dataclasses.replace(ckpt, llm_state=state), path, *args, **kwargs)

    monkeypatch.setattr(llm_gguf, "write_gguf", corrupt)
    out = tmp_path / "bad"
    assert main(["convert", str(tiny_hf_checkpoint), "-o", str(out), "--quant", "f16", "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("llava-local: error: parity check failed:") and "\n" not in err
    assert "llm f16: greedy answer diverges from torch at token 0 (torch margin" in err
    assert not out.exists()


def test_byte_tokens_render_like_the_runtime(tiny_hf_checkpoint, tmp_path):
    """Why the runtime check compares with torch's tokens rendered by llama.cpp: an undertrained model emits byte
    tokens that form invalid UTF-8, and HF's decode replaces them differently from a UTF-8 decoder ("\\ufffd\\ufffd"
    vs "\\ufffdI" for <0xC3><0x49>), although the tokens are the same."""
    from transformers import AutoTokenizer

    from converters.layouts import load_checkpoint
    from converters.verify import render
    from llava_local.engine import Engine

    ckpt = load_checkpoint(tiny_hf_checkpoint)
    tok = AutoTokenizer.from_pretrained(ckpt.tokenizer_dir)
    ids = tok.convert_tokens_to_ids(["<0xC3>", "<0x49>", "▁in", "▁the", "</s>", "▁the"])
    path = llm_gguf.write_gguf(ckpt, tmp_path / "llm-f16.gguf", "f16")
    with Engine(path, n_ctx=64, extra_buffers=False) as run:
        assert render(run, ids, ("</s>",)) == "\ufffdI in the"  # stops at EOS
        assert render(run, ids[2:4]) == "in the"
    assert tok.decode(ids[:3]) == "\ufffd\ufffd in"
