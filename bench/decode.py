"""Decode speed on one GGUF: our engine vs a raw llama.cpp loop vs transformers eager.

Contract: each function returns a dict with `tokens_per_second` (generated tokens after the first, divided by the
wall time they took: prefill excluded), `tokens_per_cpu_second` (the same over the process's CPU time: with one
thread it is the speed the machine would give with nobody else on it, so it is what compares fairly on a busy
shared machine) and the sizes it ran with. All three start from a prompt of the same length
(`n_prompt` positions: the engine's real prompt with one image; the raw loop and transformers get that many
token ids) and generate `n_gen` greedy tokens, so the KV cache length matches.
- `engine_decode`: `llava_local.ChatSession.ask` with an image (TextChunk timestamps; EOS can end it early), with
  the runtime's defaults (the vision dtype `open_model` picks: int8 on CPU when the bundle has a gated one) and
  llama.cpp's extra CPU buffer types (CPU_REPACK) forced on or off by `repack` (None: `cpuprobe` decides). It also
  reports that run's image encode (embedding cache off, so every run encodes) and prompt prefill, wall and CPU.
- `raw_decode`: the textbook loop, `llama_batch_get_one([tok])` + `llama_sampler_init_greedy`, same context
  parameters (threads, n_batch, extra buffer types), nothing else per token.
- `hf_decode`: `LlamaForCausalLM` (eager attention, fp32) with its KV cache, one token per forward.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def engine_decode(bundle: Path, quant: str, image: Path, n_gen: int, threads: int, repack: bool | None = None,
                  ) -> dict[str, Any]:
    import os

    from llava_local import ChatSession, GenerationConfig, RuntimeConfig, open_model
    from llava_local.cpuprobe import REPACK_ENV
    from llava_local.events import Finished, ImageEncoded, PromptProcessed

    before = os.environ.get(REPACK_ENV)
    if repack is not None:
        os.environ[REPACK_ENV] = "1" if repack else "0"
    try:
        m = open_model(bundle, RuntimeConfig(device="cpu", quant=quant, n_threads=threads, embedding_cache=False))
    finally:
        if before is None:
            os.environ.pop(REPACK_ENV, None)
        else:
            os.environ[REPACK_ENV] = before
    with m:
        s = ChatSession(m, GenerationConfig(temperature=0, max_tokens=n_gen), system="")
        fin = None
        t0 = ti = time.perf_counter()
        c_start = ci = time.process_time()
        image_s = image_cpu = 0.0
        for ev in s.ask("Describe the image in detail.", images=[image]):
            if isinstance(ev, ImageEncoded):
                image_s, image_cpu = ev.seconds, time.process_time() - c_start
                ti, ci = time.perf_counter(), time.process_time()
            elif isinstance(ev, PromptProcessed):
                prefill, prefill_cpu = time.perf_counter() - ti, time.process_time() - ci
                w0, c0 = time.perf_counter(), time.process_time()
            elif isinstance(ev, Finished):
                w1, c1 = time.perf_counter(), time.process_time()
                fin = ev
        # From the prefill event to the Finished event: n samples and n - 1 decodes (plus the stream and the
        # bookkeeping); counted as n - 1 tokens like the raw loop, whose clock starts after its first sample.
        n = fin.n_generated
        tps = (n - 1) / (w1 - w0) if n > 1 else 0.0
        cps = (n - 1) / (c1 - c0) if n > 1 else 0.0
        return {"tokens_per_second": tps, "tokens_per_cpu_second": cps, "n_generated": n,
                "n_prompt": fin.n_prompt_tokens, "n_ctx": m.engine.n_ctx, "prefill_seconds": prefill,
                "prefill_cpu_seconds": prefill_cpu, "image_seconds": image_s, "image_cpu_seconds": image_cpu,
                "vision_dtype": m.info.vision_dtype, "extra_buffers": m.engine.extra_buffers,
                "stop_reason": fin.stop_reason, "total_seconds": time.perf_counter() - t0}


def raw_decode(gguf: Path, n_prompt: int, n_gen: int, threads: int, extra_buffers: bool, n_ctx: int | None = None,
               ) -> dict[str, Any]:
    import llama_cpp

    from llava_local import llamalog

    llamalog.install()
    llama_cpp.llama_backend_init()
    mp = llama_cpp.llama_model_default_params()
    mp.n_gpu_layers = 0
    mp.use_extra_bufts = extra_buffers
    model = llama_cpp.llama_model_load_from_file(str(gguf).encode(), mp)
    cp = llama_cpp.llama_context_default_params()
    cp.n_ctx = n_ctx or n_prompt + n_gen + 16  # the engine's context size, for a like-for-like KV cache
    cp.n_batch = cp.n_ubatch = 512
    cp.n_threads = cp.n_threads_batch = threads
    cp.no_perf = True
    ctx = llama_cpp.llama_init_from_model(model, cp)
    smpl = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    llama_cpp.llama_sampler_chain_add(smpl, llama_cpp.llama_sampler_init_greedy())
    vocab = llama_cpp.llama_model_get_vocab(model)
    try:
        prompt = [1] + [3 + (i * 7919) % 400 for i in range(n_prompt - 1)]
        for i in range(0, n_prompt, 512):
            chunk = prompt[i:i + 512]
            arr = (llama_cpp.llama_token * len(chunk))(*chunk)
            assert llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(arr, len(chunk))) == 0
        one = (llama_cpp.llama_token * 1)()
        tok = llama_cpp.llama_sampler_sample(smpl, ctx, -1)
        t_first, c_first = time.perf_counter(), time.process_time()
        n = 1
        while n < n_gen and not llama_cpp.llama_vocab_is_eog(vocab, tok):
            one[0] = tok
            assert llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(one, 1)) == 0
            tok = llama_cpp.llama_sampler_sample(smpl, ctx, -1)
            n += 1
        dt, dc = time.perf_counter() - t_first, time.process_time() - c_first
    finally:
        llama_cpp.llama_sampler_free(smpl)
        llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)
    return {"tokens_per_second": (n - 1) / dt if n > 1 else 0.0,
            "tokens_per_cpu_second": (n - 1) / dc if n > 1 else 0.0, "n_generated": n, "n_prompt": n_prompt,
            "n_ctx": int(cp.n_ctx)}


def hf_decode(checkpoint: Path, n_prompt: int, n_gen: int, threads: int) -> dict[str, Any]:
    import torch

    from converters.layouts import load_checkpoint
    from converters.torch_ref import build_llm

    torch.set_num_threads(threads)
    model = build_llm(load_checkpoint(checkpoint))
    ids = torch.tensor([[1] + [3 + (i * 7919) % 400 for i in range(n_prompt - 1)]])
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True)
        past, tok = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(n_gen - 1):
            out = model(input_ids=tok, past_key_values=past, use_cache=True)
            past, tok = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
    return {"tokens_per_second": (n_gen - 1) / dt, "tokens_per_cpu_second": (n_gen - 1) / dc, "n_generated": n_gen,
            "n_prompt": n_prompt, "dtype": "float32"}
