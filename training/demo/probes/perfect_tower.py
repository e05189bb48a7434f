"""Diagnostic: LLaVA stage 2 on the demo data with a *perfect* vision tower, to see what the language model can do.

`python -m training.demo.probes.perfect_tower --work build/demo` (after the recipe's data and lm stages).

Contract:
- `cell_features(scene)` → (9, 22) float tensor, one row per grid cell in the tower's raster order: one-hot
  colour (6), shape (4), size (2), "empty" (1) and cell index (9). Nothing a real tower could miss.
- `run(lm_dir, stage2_json, cfg)` trains a fresh `mlp2x_gelu` projector (22 → hidden → hidden) and the LLaMA on
  the recipe's stage-2 records exactly as `llava-local train demo-stage2` tokenizes them (`vicuna_v1`, answers-only
  loss, 9 image slots), with those features in the image slots, then asks the held-out eval questions
  (`evaluate.eval_set`, greedy, one fresh conversation each) and returns the `EvalResult`.
- If the perfect-tower score is no better than the real pipeline's, the tower, projector and stage 1 are not the
  limit (docs/demo-model-history.md, "What the fifth round measured").

It reads scene keys from the records' image names (`images/s000042.png` → `make_scene(world_seed, 42)`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.datagen.world import COLOURS, SHAPES, SIZES, Scene, make_scene

from ..evaluate import EvalResult, eval_set

# one-hot layout of a cell's feature row: colour | shape | size | empty | cell index
_SHAPE0 = len(COLOURS)
_SIZE0 = _SHAPE0 + len(SHAPES)
_EMPTY = _SIZE0 + len(SIZES)
_CELL0 = _EMPTY + 1
N_FEATURES = _CELL0 + 9


@dataclass(frozen=True)
class PerfectTowerConfig:
    """Stage-2 schedule (the demo-stage2 preset's by default) and the eval size."""

    steps: int = 1200
    batch_size: int = 32
    lr: float = 2e-3
    warmup_ratio: float = 0.03
    group_steps: int = 16  # sort this many steps' records by length (less padding), as the recipe does
    world_seed: int = 0
    eval_n: int = 300
    eval_seed: int = 1000
    bf16: bool = False  # autocast the step (a CPU with AVX512-BF16: ~1.5x faster)
    seed: int = 0


def cell_features(scene: Scene) -> torch.Tensor:
    """(9, N_FEATURES) one-hot description of each grid cell, row-major like the tower's 3x3 patches."""
    f = torch.zeros(9, N_FEATURES)
    f[:, _EMPTY] = 1.0
    f[:, _CELL0:] = torch.eye(9)
    for o in scene.objects:
        c = o.row * 3 + o.col
        f[c, _EMPTY] = 0.0
        f[c, list(COLOURS).index(o.colour)] = 1.0
        f[c, _SHAPE0 + list(SHAPES).index(o.shape)] = 1.0
        f[c, _SIZE0 + list(SIZES).index(o.size)] = 1.0
    return f


class PerfectLlava(nn.Module):
    """LLaMA + a projector of per-cell features (the one-hot ones by default) into its `<image>` slots (9 per image)."""

    def __init__(self, lm: nn.Module, image_token_id: int, in_features: int = N_FEATURES) -> None:
        super().__init__()
        hidden = lm.config.hidden_size
        self.lm, self.image_token_id = lm, image_token_id
        self.projector = nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Linear(hidden, hidden))

    def embed(self, ids: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """(B, L) ids + (B, 9, F) features → (B, L, D); each row holds exactly one image's 9 slots."""
        emb = self.lm.get_input_embeddings()(ids.clamp(max=self.lm.config.vocab_size - 1))
        slots = ids == self.image_token_id
        if slots.any():
            emb = emb.masked_scatter(slots.unsqueeze(-1), self.projector(feats).to(emb.dtype))
        return emb

    def forward(self, batch: dict[str, Any], with_labels: bool = True) -> Any:
        """A collated batch (ids, attention mask, (B, 9, F) features, labels) through the LLaMA: its HF output."""
        return self.lm(inputs_embeds=self.embed(batch["input_ids"], batch["pixel_values"]),
                       attention_mask=batch["attention_mask"], labels=batch["labels"] if with_labels else None)


def _encode_records(records: list[dict[str, Any]], tok: Any, world_seed: int,
                    context_length: int = 512) -> list[dict[str, Any]]:
    """Records → `training.dataset` samples, with the scene's cell features where the pixels would be."""
    from llava_local.templates import get_template
    from training.dataset import encode, parse_record

    template, image_id = get_template("vicuna_v1"), tok.convert_tokens_to_ids("<image>")
    out = []
    for i, rec in enumerate(records):
        sample = parse_record(rec, i)
        ids, labels = encode(template.render(list(sample.turns), add_generation_prompt=False), tok, image_id, 9,
                             sample.id)
        scene = make_scene(world_seed, int(re.search(r"s(\d+)", rec["image"]).group(1)))
        # the image's 9 slots open every record, so a plain cut never splits them
        out.append({"input_ids": torch.tensor(ids[:context_length]), "labels": torch.tensor(labels[:context_length]),
                    "pixel_values": cell_features(scene)[None], "truncated": len(ids) > context_length})
    return out


def train(model: PerfectLlava, data: list[dict[str, Any]], cfg: PerfectTowerConfig, pad_id: int) -> None:
    """The trainer's schedule and batching (`warmup_then_decay`, `micro_batches`), without its model wrapper."""
    from training.dataset import collate
    from training.distributed import micro_batches
    from training.trainer import warmup_then_decay

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, warmup_then_decay(cfg.steps, max(1, math.ceil(cfg.warmup_ratio * cfg.steps))))
    lengths = [len(d["input_ids"]) for d in data]

    def steps():
        for epoch in itertools.count():
            for step in micro_batches(lengths, cfg.seed, epoch, cfg.batch_size, 1, 1, True, cfg.group_steps):
                yield step[0]

    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16)
    t0 = time.time()
    model.train()
    for step, idx in zip(range(cfg.steps), steps()):
        b = collate([data[i] for i in idx], pad_id)  # pixel_values: (B, 9, F) cell features
        with autocast:
            loss = model(b).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == cfg.steps - 1:
            print(f"step {step + 1}/{cfg.steps} loss {loss.item():.4f} {time.time() - t0:.0f}s", file=sys.stderr)


@torch.no_grad()
def evaluate(model: PerfectLlava, tok: Any, cfg: PerfectTowerConfig) -> EvalResult:
    from llava_local.templates import Turn, get_template
    from training.dataset import encode

    template, result = get_template("vicuna_v1"), EvalResult()
    model.eval()
    for item in eval_set(cfg.eval_n, cfg.eval_seed):
        ids, _ = encode(template.render([Turn("user", item.prompt, 1)], add_generation_prompt=True), tok,
                        model.image_token_id, 9)
        emb = model.embed(torch.tensor([ids]), cell_features(item.scene)[None])
        out = model.lm.generate(inputs_embeds=emb, max_new_tokens=64, do_sample=False,
                                eos_token_id=tok.eos_token_id, pad_token_id=tok.unk_token_id)[0].tolist()
        if tok.eos_token_id in out:
            out = out[: out.index(tok.eos_token_id)]
        result.add(item, tok.decode(out, skip_special_tokens=True).strip())
    return result


def run(lm_dir: str | Path, stage2_json: str | Path, cfg: PerfectTowerConfig) -> EvalResult:
    from transformers import AutoTokenizer, LlamaForCausalLM

    torch.manual_seed(cfg.seed)
    tok = AutoTokenizer.from_pretrained(str(lm_dir))
    records = json.loads(Path(stage2_json).read_text(encoding="utf-8"))
    data = _encode_records(records, tok, cfg.world_seed)
    model = PerfectLlava(LlamaForCausalLM.from_pretrained(str(lm_dir), dtype=torch.float32),
                         tok.convert_tokens_to_ids("<image>"))
    t0 = time.time()
    train(model, data, cfg, pad_id=tok.unk_token_id)
    result = evaluate(model, tok, cfg)
    result.seconds = time.time() - t0
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.demo.probes.perfect_tower",
                                description=__doc__.splitlines()[0])
    p.add_argument("--work", default="build/demo", help="the recipe's work dir (base-llm/ and data/stage2.json)")
    p.add_argument("--steps", type=int, default=PerfectTowerConfig.steps)
    p.add_argument("--lr", type=float, default=PerfectTowerConfig.lr)
    p.add_argument("--n", type=int, default=PerfectTowerConfig.eval_n, help="held-out scenes to ask about")
    p.add_argument("--bf16", action="store_true", help="autocast to bf16 (fast on CPUs with AVX512-BF16)")
    args = p.parse_args(argv)
    work = Path(args.work)
    if not (work / "base-llm").is_dir() or not (work / "data" / "stage2.json").is_file():
        print(f"perfect_tower: error: {work} needs base-llm/ and data/stage2.json (run the recipe's data, "
              "tokenizer and lm stages first)", file=sys.stderr)
        return 2
    cfg = PerfectTowerConfig(steps=args.steps, lr=args.lr, eval_n=args.n, bf16=args.bf16)
    result = run(work / "base-llm", work / "data" / "stage2.json", cfg)
    print(json.dumps(result.summary()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
