"""`llava-local train CONFIG --dry-run`: what would train, and roughly how much memory it needs.

Contract: `dry_run_report(cfg) -> str` builds the model on the meta device from the base dirs' config.json files
(no weights are read, so it is instant for 7B), applies the stage's freeze policy (and LoRA), and reports
parameters per part (total / trainable), the batch geometry, the data size when the JSON exists, and a
per-GPU memory estimate for 1 GPU and for FSDP2 over 8 GPUs. The estimate counts weights, gradients and AdamW
states (fp32 master copies), the bf16 copy of one gathered FSDP unit, checkpointed activations (one
(B, L, D) bf16 tensor per layer plus one layer's working set) and the fp32 logits; it is an estimate, not a
measurement (CUDA context, allocator fragmentation and NCCL buffers add 1-3 GB).
"""

from __future__ import annotations

from pathlib import Path

import torch

from llava_local.errors import UsageError

from .config import TrainConfig
from .model import LlavaForTraining, apply_freeze, count_parameters, inject_lora, load_tokenizer, tokens_per_image
from .projector import build_projector

GB = 1024**3


def _meta_model(cfg: TrainConfig) -> tuple[LlavaForTraining, int]:
    from transformers import AutoConfig, AutoModelForCausalLM, CLIPVisionConfig, CLIPVisionModel

    m = cfg.model
    for key, path in (("model.vision_tower", m.vision_tower), ("model.language_model", m.language_model)):
        if not (Path(path).expanduser() / "config.json").is_file():
            raise UsageError(f"{key}: no config.json in {path!r}; fix the path or pass {key}=PATH")
    vcfg = CLIPVisionConfig.from_pretrained(str(Path(cfg.model.vision_tower).expanduser()))
    tcfg = AutoConfig.from_pretrained(str(Path(cfg.model.language_model).expanduser()))
    try:
        vocab = len(load_tokenizer(cfg.tokenizer_dir))
    except UsageError:
        vocab = tcfg.vocab_size + 1
    tcfg.vocab_size = max(tcfg.vocab_size, vocab)
    with torch.device("meta"):
        vision = CLIPVisionModel(vcfg)
        lm = AutoModelForCausalLM.from_config(tcfg)
        proj = build_projector(cfg.model.projector_type, vcfg.hidden_size, tcfg.hidden_size)
        model = LlavaForTraining(vision, proj, lm, 0, cfg.model.vision_feature_layer,
                                 cfg.model.vision_feature_select_strategy)
        if cfg.lora.enabled:
            inject_lora(model, cfg)
    apply_freeze(model, cfg)
    return model, tokens_per_image(vcfg, cfg.model.vision_feature_select_strategy)


def _estimate(model: LlavaForTraining, cfg: TrainConfig, world: int, bf16: bool) -> dict[str, float]:
    params = list(model.named_parameters())
    total = sum(p.numel() for _, p in params)
    train = sum(p.numel() for _, p in params if p.requires_grad)
    tc = model.language_model.config
    layers = tc.num_hidden_layers
    b, seq, d, v = cfg.optim.micro_batch_size, cfg.data.context_length, tc.hidden_size, tc.vocab_size
    act_bytes = 2 if bf16 else 4
    if world > 1:
        weights = total * 4 / world  # fp32 shards
        unit = 2 * (total / max(layers, 1)) * act_bytes  # two gathered layers (current + prefetched)
    else:
        weights = (total - train) * (2 if bf16 else 4) + train * 4  # frozen in bf16 on one GPU
        unit = 0.0
    grads_optim = train * (4 + 8) / world  # fp32 grads + AdamW exp_avg, exp_avg_sq
    if cfg.train.activation_checkpointing:
        acts = layers * b * seq * d * act_bytes + b * seq * (16 * d + 2 * tc.intermediate_size) * act_bytes
    else:
        acts = layers * b * seq * (16 * d + 3 * tc.intermediate_size) * act_bytes
    logits = b * seq * v * 4 * 2  # fp32 logits + their gradient, upper bound (only label rows are computed)
    parts = {"weights": weights, "grads+adam": grads_optim, "gathered": unit, "activations": acts, "logits": logits}
    return {k: x / GB for k, x in parts.items()} | {"total": sum(parts.values()) / GB}


def dry_run_report(cfg: TrainConfig, world: int = 1) -> str:
    model, n_img = _meta_model(cfg)
    lines = [f"stage {cfg.stage}: {'projector only' if cfg.stage == 1 else 'projector + LLM'}"
             f"{f' (LoRA r={cfg.lora.r})' if cfg.lora.enabled else ''}; template {cfg.model.template}; "
             f"projector {cfg.model.projector_type}; {n_img} tokens per image",
             f"{'part':<24}{'parameters':>16}{'trainable':>16}"]
    counts = count_parameters(model)
    for part, c in counts.items():
        lines.append(f"{part:<24}{c['total']:>16,}{c['trainable']:>16,}")
    tot = sum(c["total"] for c in counts.values())
    tr = sum(c["trainable"] for c in counts.values())
    lines.append(f"{'total':<24}{tot:>16,}{tr:>16,}  ({100 * tr / max(tot, 1):.2f}% trainable)")
    o = cfg.optim
    accum = o.global_batch_size // (o.micro_batch_size * world) if o.global_batch_size % (o.micro_batch_size * world) \
        == 0 else None
    lines.append(f"batch: global {o.global_batch_size} = micro {o.micro_batch_size} × accumulation {accum} × "
                 f"{world} process(es); context {cfg.data.context_length}; lr {o.lr:g}, warmup {o.warmup_ratio:g}, "
                 f"{o.epochs} epoch(s)")
    data = Path(cfg.data.json).expanduser()
    if cfg.data.json and data.is_file():
        from .dataset import load_records

        n = len(load_records(data))
        steps = o.max_steps or (n // o.global_batch_size) * o.epochs
        lines.append(f"data: {n:,} samples → {steps:,} optimizer steps")
    else:
        lines.append(f"data: {cfg.data.json or '(data.json not set)'} not found here; step count unknown")
    for w in (1, 8):
        est = _estimate(model, cfg, w, bf16=True)
        detail = ", ".join(f"{k} {v:.1f}" for k, v in est.items() if k != "total")
        lines.append(f"memory per GPU, bf16, {w} GPU{'s (FSDP2)' if w > 1 else ''}: ~{est['total']:.1f} GiB "
                     f"({detail})")
    return "\n".join(lines)
