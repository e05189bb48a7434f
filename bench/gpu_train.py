"""GPU training benchmark: a few stage-2 steps of a ~1B LLaVA with FSDP2 + bf16 + activation checkpointing.

Run (one GPU, or N under torchrun; nothing is downloaded, the models are random):
    python -m bench.gpu_train --steps 8                                   (make bench-gpu)
    torchrun --standalone --nproc-per-node 8 -m bench.gpu_train --steps 8
Prints tokens/s (all ranks), MFU against `--peak-tflops` per GPU (H100/H200 SXM dense bf16: 989), and the peak
allocated memory of rank 0. It drives the real trainer (`run_training`) on random weights written to `--work`:
CLIP ViT-L/14-336 shape (304M, frozen) + a TinyLlama-1.1B-shaped LLaMA (hidden 2048, 22 layers, GQA 32/4,
vocab 32000), mlp2x_gelu projector, full stage-2 fine-tuning, sequences of `--seq` tokens (576 image tokens + text).
MFU counts model FLOPs only: 6·N_llm per token + attention 12·layers·hidden·seq per token + the projector, and
2·N_vision per image token for the frozen tower's forward (activation recompute is not counted, as usual).
`--size tiny` runs the same pipeline with toy sizes on CPU (a smoke test of this script).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

SIZES = {
    "1b": {"llm": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                       num_key_value_heads=4, vocab_size=32000),
           "clip": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                        image_size=336, patch_size=14)},
    "tiny": {"llm": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=1024),
             "clip": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                          image_size=56, patch_size=14)},
}


def prepare(work: Path, size: str, n_samples: int, seq: int) -> None:
    """Random base models, a tokenizer and a synthetic LLaVA JSON with ~`seq` tokens per sample (rank 0)."""
    import torch
    from PIL import Image
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    from training.tokenizer import tiny_corpus, train_sentencepiece

    s = SIZES[size]
    llm, clip = work / "llm", work / "clip"
    train_sentencepiece(tiny_corpus(400), llm, 512, add_image_token=False, model_max_length=seq)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(max_position_embeddings=max(seq, 2048), **s["llm"])).to(torch.bfloat16) \
        .save_pretrained(llm)
    CLIPVisionModel(CLIPVisionConfig(projection_dim=768, hidden_act="quick_gelu", **s["clip"])).save_pretrained(clip)
    rng = random.Random(0)
    lines = tiny_corpus(2000)
    img = work / "img.png"
    Image.effect_noise((400, 300), 64).convert("RGB").save(img)
    records = []
    for i in range(n_samples):
        # ~2 tokens per word with this 512-piece vocab; LLaVA-1.5's 665K mix averages ~1,100 tokens per sample.
        answer = " ".join(rng.choice(lines) for _ in range(max(1, (seq - 700) // 24)))
        records.append({"id": str(i), "image": img.name, "conversations": [
            {"from": "human", "value": "<image>\nDescribe the picture in detail."}, {"from": "gpt", "value": answer}]})
    (work / "data.json").write_text(json.dumps(records))
    (work / "READY").write_text("ok")


def model_flops_per_token(work: Path, seq: int, n_img_tokens: int) -> float:
    """Training FLOPs per token (forward + backward, no recompute), averaged with the frozen tower's forward."""
    llm_cfg = json.loads((work / "llm" / "config.json").read_text())
    clip_cfg = json.loads((work / "clip" / "config.json").read_text())
    h, f, n, v = (llm_cfg[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size"))
    kv = h * llm_cfg["num_key_value_heads"] // llm_cfg["num_attention_heads"]
    n_llm = n * (2 * h * h + 2 * h * kv + 3 * h * f) + 2 * h * v
    hv, fv, nv = (clip_cfg[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers"))
    n_vis = nv * (4 * hv * hv + 2 * hv * fv)
    n_proj = hv * h + h * h
    per_tok = 6 * (n_llm + n_proj) + 12 * n * h * seq
    vision = 2 * n_vis * n_img_tokens * (1 + 1 / n_img_tokens)  # one image per sample, CLS included
    return per_tok + vision / seq


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="1b")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--micro", type=int, default=4, help="micro-batch per GPU")
    ap.add_argument("--accum", type=int, default=1)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak per GPU (H100/H200 SXM: 989)")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "llava-bench")
    ap.add_argument("--no-checkpointing", action="store_true", help="disable activation checkpointing")
    a = ap.parse_args(argv)

    from training.config import config_from_dict
    from training.trainer import run_training

    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    global_batch = a.micro * a.accum * world
    work = a.work / a.size
    if rank == 0 and not (work / "READY").is_file():
        work.mkdir(parents=True, exist_ok=True)
        prepare(work, a.size, global_batch * (a.steps + 1), a.seq)
    while not (work / "READY").is_file():
        time.sleep(1)
    out = work / f"run-{world}x{a.micro}x{a.accum}-{int(time.time()) // 10}"
    cfg = config_from_dict({
        "stage": 2,
        "model": {"vision_tower": str(work / "clip"), "language_model": str(work / "llm"),
                  "projector_type": "mlp2x_gelu", "template": "vicuna_v1"},
        "data": {"json": str(work / "data.json"), "context_length": a.seq, "num_workers": min(4, os.cpu_count() or 1)},
        "optim": {"lr": 2e-5, "global_batch_size": global_batch, "micro_batch_size": a.micro,
                  "max_steps": a.steps, "warmup_ratio": 0.0},
        "train": {"out_dir": str(out), "precision": "auto", "activation_checkpointing": not a.no_checkpointing,
                  "checkpoint_every": 0, "tensorboard": False},
    })
    run_training(cfg)
    if rank != 0:
        return
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timed = recs[2:] or recs  # the first steps include compilation/allocator warm-up
    tokens = sum(r["tokens"] for r in timed)
    seconds = sum(r["step_s"] for r in timed)
    tps = tokens / seconds
    clip_cfg = json.loads((work / "clip" / "config.json").read_text())
    n_img = (clip_cfg["image_size"] // clip_cfg["patch_size"]) ** 2
    flops = model_flops_per_token(work, a.seq, n_img) * tps
    mfu = flops / (a.peak_tflops * 1e12 * world)
    peak = max((r.get("peak_mem_gib", 0.0) for r in recs), default=0.0)
    print(json.dumps({"size": a.size, "world": world, "micro": a.micro, "accum": a.accum, "seq": a.seq,
                      "activation_checkpointing": not a.no_checkpointing, "steps_timed": len(timed),
                      "tokens_per_s": round(tps, 1), "tokens_per_s_per_gpu": round(tps / world, 1),
                      "model_tflops_per_gpu": round(flops / world / 1e12, 1), "mfu": round(mfu, 4),
                      "peak_mem_gib_rank0": peak, "loss_last": recs[-1]["loss"]}, indent=2))


if __name__ == "__main__":
    main()
