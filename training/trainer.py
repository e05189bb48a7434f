"""One training loop for CPU, one GPU and many GPUs (FSDP2 under torchrun).

Contract: `run_training(cfg, resume=False, probe=None) -> Path` trains the configured stage and writes the layout-c
output to `cfg.train.out_dir` (see `export.py`); progress goes to a live line, `metrics.jsonl` (and TensorBoard when
installed), checkpoints to `out_dir/checkpoints/`. Run it as `llava-local train CONFIG` (one process) or
`torchrun --nproc-per-node N -m llava_local.cli train CONFIG` (FSDP2; docs/training.md has multi-node).

Per optimizer step, every rank processes `accum` micro-batches of its slice of the global batch
(`distributed.micro_batches`). The loss is the token-level mean over the whole global batch: each micro-batch
contributes sum(CE) · world / (label tokens of the global batch), and FSDP2 averages gradients over ranks, so
the result does not depend on how samples fall into micro-batches or ranks (LLaVA's HF Trainer averages per
micro-batch instead, which over-weights short answers). Gradient sync is skipped on all but the last
micro-batch. Schedule: linear warmup then cosine to 0, by optimizer step. Resume (`--resume`) restores model,
optimizer, scheduler, RNG and the position in the data order from the newest complete checkpoint, so the loss
curve continues exactly. SIGTERM/SIGINT finish the current step, checkpoint, and exit (code 143/130).
Early stop on a probe: with `probe` (out_dir, step → stop?) and `train.probe_every`, the model is exported to
`out_dir` at each probe step and the run ends there, exported, when the probe returns True (rank 0 decides).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from llava_local.errors import UsageError
from llava_local.preprocess import PreprocessConfig
from llava_local.templates import get_template

from . import checkpoint as ckpt
from .config import TrainConfig, check_paths
from .dataset import LlavaDataset, collate, load_records
from .distributed import Dist, all_reduce_sum, micro_batches, setup, shard, teardown
from .export import write_output
from .metrics import MetricsLogger
from .model import build_model, count_parameters, llava_hf_config, load_tokenizer, tokens_per_image

log = logging.getLogger(__name__)


def warmup_then_decay(total: int, warmup: int, schedule: str = "cosine", decay_ratio: float = 0.2):
    """LR multiplier per step: 0→1 linearly over `warmup` steps, then cosine 1→0 at `total`; or 1 throughout with
    `schedule="constant"`; or, with `schedule="wsd"`, 1 until the last `decay_ratio × total` steps and linear to 0
    over those (the multiplier of the last step is 1/decay_steps, not 0: every step still trains)."""
    decay_steps = max(1, round(decay_ratio * total))

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        if schedule == "wsd":
            return min(1.0, (total - step) / decay_steps)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return f


def _optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    o = cfg.optim
    proj, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (proj if name.startswith("multi_modal_projector.") else rest).append(p)
    groups = [{"params": proj, "lr": o.projector_lr or o.lr}]
    if rest:
        groups.append({"params": rest, "lr": o.lr})
    return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)


class _StopFlag:
    """SIGTERM/SIGINT → stop after the current step, with a checkpoint (only in the main thread)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        import threading

        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


class Setup:
    """Everything a run needs, built once: tokenizer, model, data, preprocessing, batch geometry."""

    def __init__(self, cfg: TrainConfig, dist: Dist) -> None:
        check_paths(cfg)
        self.cfg, self.dist = cfg, dist
        torch.manual_seed(cfg.train.seed)  # projector init and new embedding rows
        self.tokenizer = load_tokenizer(cfg.tokenizer_dir)
        self.model = build_model(cfg, self.tokenizer)
        vcfg = self.model.vision_tower.config
        size = cfg.data.image_size or vcfg.image_size
        if size != vcfg.image_size:
            raise UsageError(f"data.image_size {size} differs from the vision tower's {vcfg.image_size}; "
                             "leave data.image_size=0")
        self.preprocess = PreprocessConfig(mode=cfg.data.preprocess_mode, size=size, resample=cfg.data.resample)
        self.n_image_tokens = tokens_per_image(vcfg, cfg.model.vision_feature_select_strategy)
        root = cfg.data.image_root or str(Path(cfg.data.json).expanduser().parent)
        self.dataset = LlavaDataset(load_records(cfg.data.json), root, self.tokenizer, get_template(cfg.model.template),
                                    self.preprocess, self.n_image_tokens, cfg.data.context_length)
        o = cfg.optim
        per_rank = o.global_batch_size // dist.world
        if o.global_batch_size % (o.micro_batch_size * dist.world):
            raise UsageError(f"optim.global_batch_size {o.global_batch_size} is not a multiple of micro_batch_size "
                             f"{o.micro_batch_size} × {dist.world} processes")
        self.accum = per_rank // o.micro_batch_size
        self.steps_per_epoch = len(self.dataset) // o.global_batch_size
        if self.steps_per_epoch == 0:
            raise UsageError(f"data.json has {len(self.dataset)} samples, fewer than one global batch "
                             f"({o.global_batch_size}); lower optim.global_batch_size")
        self.total_steps = o.max_steps or self.steps_per_epoch * o.epochs
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else \
            (self.tokenizer.unk_token_id or 0)

    def step_batches(self, start: int):
        """Yield (step, [micro-batch dicts]) for this rank from optimizer step `start` on."""
        cfg, d = self.cfg, self.dist
        lengths = self.dataset.approx_lengths() if cfg.data.group_by_length else [0] * len(self.dataset)
        step = start
        while step < self.total_steps:
            epoch, s0 = divmod(step, self.steps_per_epoch)
            order = micro_batches(lengths, cfg.train.seed, epoch, cfg.optim.micro_batch_size, self.accum, d.world,
                                  cfg.data.group_by_length, cfg.data.length_group_steps)
            mine = [order[s][a * d.world + d.rank] for s in range(s0, len(order)) for a in range(self.accum)]
            loader = torch.utils.data.DataLoader(
                self.dataset, batch_sampler=mine, num_workers=cfg.data.num_workers,
                collate_fn=functools.partial(collate, pad_id=self.pad_id),
                generator=torch.Generator(),  # keep the global RNG untouched (exact resume)
            )
            it = iter(loader)
            for _ in range(s0, len(order)):
                yield step, [next(it) for _ in range(self.accum)]
                step += 1
                if step >= self.total_steps:
                    return


def _use_bf16(cfg: TrainConfig, dist: Dist) -> bool:
    return cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and dist.device.type == "cuda")


Probe = Callable[[Path, int], bool]  # (exported out_dir, steps done) → stop now?


def probe_due(cfg: TrainConfig, done: int, total: int) -> bool:
    """Is step `done` a probe step? Every `probe_every` steps from `probe_after` on, before the last step."""
    r = cfg.train
    first = r.probe_after or r.probe_every
    return bool(r.probe_every) and first <= done < total and (done - first) % r.probe_every == 0


def run_training(cfg: TrainConfig, resume: bool = False, probe: Probe | None = None) -> Path:
    dist = setup(cfg.distributed.backend)
    try:
        return _train(cfg, dist, resume, probe)
    finally:
        teardown(dist)


def _train(cfg: TrainConfig, dist: Dist, resume: bool, probe: Probe | None) -> Path:
    su = Setup(cfg, dist)
    model, out_dir = su.model, Path(cfg.train.out_dir).expanduser()
    ckpt_root = out_dir / "checkpoints"
    bf16 = _use_bf16(cfg, dist)
    if bf16 and not dist.enabled:
        # One GPU: frozen weights in bf16 (half the memory; a 7B LoRA run fits 24 GB), trainable ones in fp32.
        # FSDP2 keeps one dtype per unit and casts by policy instead.
        for p in model.parameters():
            if not p.requires_grad:
                p.data = p.data.to(torch.bfloat16)
    if not dist.enabled:
        model.to(dist.device)
    # Under FSDP2, fully_shard moves each unit to the GPU as it shards it: the full model never sits on one GPU.
    if cfg.train.activation_checkpointing:
        _enable_activation_checkpointing(model.language_model)
    if dist.enabled:
        shard(model, dist, bf16, cfg.distributed.reshard_after_forward)
    model.train()
    optimizer = _optimizer(model, cfg)
    warmup = cfg.optim.warmup_for(su.total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_then_decay(
        su.total_steps, warmup, cfg.optim.schedule, cfg.optim.decay_ratio))
    start, resumed_truncated = 0, 0
    found = ckpt.latest(ckpt_root)
    if resume:
        if found is None:
            raise UsageError(f"--resume: no complete checkpoint in {ckpt_root}; start without --resume")
        extra = ckpt.load(found, model, optimizer, dist)
        saved_global = extra["accum"] * extra["micro_batch_size"] * dist.world
        if saved_global != cfg.optim.global_batch_size:
            raise UsageError(f"checkpoint {found.name} used optim.global_batch_size={saved_global}; resume with the "
                             "same global batch size (micro_batch_size may change)")
        scheduler.load_state_dict(extra["scheduler"])
        start = extra["step"]
        resumed_truncated = int(extra.get("truncated", 0))
    elif found is not None:
        raise UsageError(f"{out_dir} already has checkpoints; pass --resume to continue, or set train.out_dir")
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    metrics = MetricsLogger(out_dir, su.total_steps, enabled=dist.is_main, tensorboard=cfg.train.tensorboard,
                            start_step=start)
    params = [p for p in model.parameters() if p.requires_grad]
    # bf16 autocast only without FSDP: FSDP2's MixedPrecisionPolicy casts parameters itself.
    autocast = torch.autocast(dist.device.type, dtype=torch.bfloat16, enabled=bf16 and not dist.enabled)

    def save(step: int) -> None:
        extra = {"step": step, "scheduler": scheduler.state_dict(), "accum": su.accum, "truncated": truncated,
                 "micro_batch_size": cfg.optim.micro_batch_size}
        ckpt.save(ckpt_root, step, model, optimizer, extra, dist, keep=cfg.train.keep_checkpoints)

    step, done, stopped, truncated, exported = start, start, None, resumed_truncated, -1
    with _StopFlag() as stop:
        for step, batches in su.step_batches(start):
            t0 = time.perf_counter()
            dev = dist.device
            n_label = torch.tensor(float(sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)))
            n_tok = torch.tensor(float(sum(int(b["attention_mask"].sum()) for b in batches)))
            trunc = torch.tensor(float(sum(b["truncated"] for b in batches)))
            counts = all_reduce_sum(torch.stack([n_label, n_tok, trunc]).to(dev), dist)
            denom = max(float(counts[0]), 1.0)
            truncated += int(counts[2])
            loss_sum = torch.zeros((), device=dev)
            for a, b in enumerate(batches):
                if dist.enabled:
                    model.set_requires_gradient_sync(a == len(batches) - 1)
                pv = b["pixel_values"].to(dev) if b["pixel_values"].shape[0] else None
                with autocast:
                    ls, _ = model(b["input_ids"].to(dev), b["attention_mask"].to(dev), b["labels"].to(dev), pv)
                (ls * dist.world / denom).backward()
                loss_sum += ls.detach().float()
            grad_norm = _clip(params, cfg.optim.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss = float(all_reduce_sum(loss_sum, dist)) / denom
            done = step + 1
            values = {"loss": loss, "lr": scheduler.get_last_lr()[-1], "grad_norm": grad_norm,
                      "tokens": int(counts[1]), "label_tokens": int(counts[0]), "truncated": int(counts[2]),
                      "epoch": step // su.steps_per_epoch}
            if dev.type == "cuda":
                values["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 3)  # this rank
            metrics.log(done, values, time.perf_counter() - t0, force=done % cfg.train.log_every == 0)
            # Every rank must stop at the same step (a checkpoint is a collective): agree on the signal.
            signalled = float(all_reduce_sum(torch.tensor([float(stop.signal or 0)], device=dev), dist)[0])
            stop_now = (signalled > 0 or done == cfg.train.stop_after_steps) and done < su.total_steps
            every = cfg.train.checkpoint_every
            if stop_now or (every and (done % every == 0 or done == su.total_steps)):
                save(done)
            if stop_now:
                stopped = stop.signal or (signal.SIGTERM if signalled else 0)
                break
            if probe is not None and probe_due(cfg, done, su.total_steps):
                _export(su, out_dir, bf16, truncated, done)
                exported = done
                learned = float(probe(out_dir, done)) if dist.is_main else 0.0
                if float(all_reduce_sum(torch.tensor([learned], device=dev), dist)[0]) > 0:
                    if dist.is_main:
                        print(f"step {done}: the probe says the skill is learned; stopping early "
                              f"(optim.max_steps={su.total_steps} is the cap)", file=sys.stderr)
                    break
    metrics.close()
    if stopped is not None:
        if dist.is_main:
            print(f"stopped after step {step + 1}; continue with --resume", file=sys.stderr)
        if stopped:
            raise SystemExit(128 + stopped)
        return out_dir
    if truncated and dist.is_main:
        print(f"{truncated} sample(s) of this run were longer than data.context_length="
              f"{cfg.data.context_length} and were truncated (see 'truncated' in metrics.jsonl)", file=sys.stderr)
    if exported != done:  # a probe that stopped the run has just exported this step's model
        _export(su, out_dir, bf16, truncated, done)
    return out_dir


def _enable_activation_checkpointing(lm: torch.nn.Module) -> None:
    """Recompute each decoder layer in backward (non-reentrant: works with frozen inputs, LoRA and FSDP2)."""
    kwargs = {"use_reentrant": False}
    if hasattr(lm, "activation_checkpointing_enable"):  # transformers >= 5.2x
        lm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _clip(params: list[torch.Tensor], max_norm: float) -> float:
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    if hasattr(norm, "full_tensor"):  # a DTensor under FSDP2
        norm = norm.full_tensor()
    return float(norm)


def _export(su: Setup, out_dir: Path, bf16: bool, truncated: int, steps: int) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    model, dist, cfg = su.model, su.dist, su.cfg
    # A collective under FSDP2: every rank takes part, rank 0 receives the full tensors on CPU.
    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.is_main:
        counts = count_parameters(model)
        provenance = {"stage": cfg.stage, "steps": steps, "samples": len(su.dataset),
                      "vision_tower": cfg.model.vision_tower, "language_model": cfg.model.language_model,
                      "init_from": cfg.model.init_from, "data": cfg.data.json, "lora": cfg.lora.enabled,
                      "trainable_parameters": sum(c["trainable"] for c in counts.values()),
                      "world_size": dist.world, "precision": "bf16" if bf16 else "fp32",
                      "truncated_samples": truncated}
        # bf16 files halve a GPU run's checkpoint; a CPU run is small, and its fp32 master weights are worth keeping.
        dtype = torch.bfloat16 if bf16 and dist.device.type == "cuda" else torch.float32
        write_output(out_dir, sd, llava_hf_config(model, cfg), cfg, su.tokenizer, su.preprocess, provenance, dtype)
        print(f"wrote {out_dir} (convert it with: llava-local convert {out_dir} OUT_BUNDLE)", file=sys.stderr)
