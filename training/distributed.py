"""Process group, device, FSDP2 sharding and the deterministic data order.

Contract:
- `setup()` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); with WORLD_SIZE > 1 it joins a
  process group (nccl on CUDA, gloo on CPU) and returns a `Dist` describing this process. A plain
  `python -m llava_local.cli train ...` is a world of one (no process group, no FSDP).
- `shard(model, dist, mixed_precision, reshard)` applies FSDP2 (`torch.distributed.fsdp.fully_shard`) bottom-up:
  every vision encoder layer, every LLM decoder layer, then the root (projector, embeddings, norm, lm_head).
  On GPU the MixedPrecisionPolicy computes in bf16 and reduces gradients in fp32 over fp32 sharded master
  weights. Nothing here is home-made distribution: the collectives are FSDP2's.
- `micro_batches(lengths, seed, epoch, micro, accum, world, group_by_length, group_steps)` is the data order: a
  seeded permutation per epoch, cut into global batches (micro × accum × world samples, the remainder dropped);
  with `group_by_length` each global batch is sorted by length so neighbouring micro-batches (same accumulation
  step on different ranks, consecutive steps on one rank) pad little. With `group_steps` > 1 the sorting spans
  that many steps, whose batches then come in a random order: on one process without accumulation that is
  what cuts the padding (a global batch is one micro-batch). It is a pure function of its arguments,
  like DistributedSampler with a seed, so a resumed run replays exactly the same batches.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup(backend: str = "auto") -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world > 1 and not torch.distributed.is_initialized():
        if backend == "auto":
            backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return Dist(rank, world, local_rank, device)


def teardown(dist: Dist) -> None:
    if dist.enabled and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def barrier(dist: Dist) -> None:
    if dist.enabled:
        torch.distributed.barrier()


def all_reduce_sum(t: torch.Tensor, dist: Dist) -> torch.Tensor:
    if dist.enabled:
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return t


def shard(model: nn.Module, dist: Dist, bf16: bool, reshard_after_forward: bool = True) -> nn.Module:
    """FSDP2 over a `LlavaForTraining`: one unit per transformer layer (vision and LLM), then the root."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 \
        else MixedPrecisionPolicy()
    kwargs = {"mp_policy": mp, "reshard_after_forward": reshard_after_forward}
    for layer in model.vision_tower.vision_model.encoder.layers if hasattr(model.vision_tower, "vision_model") \
            else model.vision_tower.encoder.layers:
        fully_shard(layer, **kwargs)
    for layer in model.language_model.model.layers:
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    return model


def micro_batches(lengths: list[int], seed: int, epoch: int, micro: int, accum: int, world: int,
                  group_by_length: bool, group_steps: int = 1) -> list[list[list[int]]]:
    """steps[s][a * world + r] = sample indices of micro-batch `a` of rank `r` at step `s` of `epoch`.

    With `group_by_length`, the samples of `group_steps` consecutive steps are sorted by length together and
    dealt out into steps again, in a random order of steps; 1 sorts inside each global batch only."""
    g = torch.Generator().manual_seed(seed * 1000003 + epoch)
    perm = torch.randperm(len(lengths), generator=g).tolist()
    per_step = micro * accum * world
    n_steps, group = len(perm) // per_step, max(1, group_steps)
    steps = []
    for first in range(0, n_steps, group):
        k = min(group, n_steps - first)
        block = perm[first * per_step:(first + k) * per_step]
        if group_by_length:
            block = sorted(block, key=lambda i: -lengths[i])  # stable: ties keep the random order
        chunks = [block[j * per_step:(j + 1) * per_step] for j in range(k)]
        if k > 1 and group_by_length:  # else every epoch would start with its longest samples
            chunks = [chunks[j] for j in torch.randperm(k, generator=g).tolist()]
        steps += [[chunk[j * micro:(j + 1) * micro] for j in range(accum * world)] for chunk in chunks]
    return steps
