"""Step 2 of the demo recipe: pretrain a small LLaMA (random init) on the synthetic world's text.

Contract: `pretrain_lm(texts, tokenizer_dir, out_dir, cfg)` builds a `transformers.LlamaForCausalLM` from
`LMConfig`, trains it with next-token loss on `texts` (each text is one document: BOS + text + EOS), and
writes an HF model directory (`config.json`, `model.safetensors`, the tokenizer files copied from
`tokenizer_dir`) that the LLaVA training configs name as their language model. Returns a small report
(steps, final loss, seconds).

A document is a string (trained on every token) or a list of `(text, trainable)` segments (a chat: trained
only on the trainable ones, the answers). Documents are packed greedily into rows of `seq_len` tokens
(padding only at the row ends, masked with -100), so short captions cost no padding compute.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


@dataclass(frozen=True)
class LMConfig:
    """Shape and schedule of the base language model. No defaults: the recipe's values are in recipe.yaml (`lm:`)."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    max_position_embeddings: int
    seq_len: int  # packed row length in tokens
    batch_size: int  # rows per step
    steps: int
    lr: float
    warmup: int
    weight_decay: float
    seed: int
    # "bf16": autocast matmuls to bfloat16 (fp32 master weights and loss). On a CPU with AVX512-BF16 it trains
    # the tiny LLaMA ~1.5x faster; "fp32" everywhere else is the safe default. Set by the recipe's `precision`.
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16"):
            raise ValueError("precision must be fp32 or bf16")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError("hidden_size must divide into num_heads, and num_heads into num_kv_heads")
        if self.steps <= 0 or self.batch_size <= 0 or self.seq_len <= 8:
            raise ValueError("steps and batch_size must be positive and seq_len > 8")


def pack_documents(docs: Sequence[tuple[Sequence[int], Sequence[bool]]], seq_len: int,
                   pad_id: int) -> tuple[Any, Any]:
    """Greedy packing of (token ids, trained?) documents into rows of `seq_len`; returns (input_ids, labels),
    int64 (N, seq_len), labels -100 where a token is not trained on.

    Documents longer than a row are cut. A row's tail is padding with label -100.
    """
    import torch

    rows: list[tuple[list[int], list[int]]] = []
    cur_ids: list[int] = []
    cur_labels: list[int] = []
    for doc_ids, trained in docs:
        doc_ids, trained = list(doc_ids)[:seq_len], list(trained)[:seq_len]
        if len(cur_ids) + len(doc_ids) > seq_len:
            rows.append((cur_ids, cur_labels))
            cur_ids, cur_labels = [], []
        cur_ids += doc_ids
        cur_labels += [t if keep else IGNORE_INDEX for t, keep in zip(doc_ids, trained)]
    if cur_ids:
        rows.append((cur_ids, cur_labels))
    ids = torch.full((len(rows), seq_len), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), seq_len), IGNORE_INDEX, dtype=torch.long)
    for i, (row_ids, row_labels) in enumerate(rows):
        ids[i, : len(row_ids)] = torch.tensor(row_ids)
        labels[i, : len(row_labels)] = torch.tensor(row_labels)
    return ids, labels


def tokenize_document(doc: str | Sequence[Sequence[Any]], tok: Any) -> tuple[list[int], list[bool]]:
    """BOS + the document's tokens + EOS, and which of them are trained on.

    Segments are tokenized one by one, as `training.dataset` tokenizes template pieces, so an answer's tokens
    are the same here as in LLaVA's stage 2."""
    segments = [(doc, True)] if isinstance(doc, str) else [(str(t), bool(k)) for t, k in doc]
    ids, trained = [tok.bos_token_id], [False]
    for text, keep in segments:
        piece = tok(text, add_special_tokens=False)["input_ids"]
        ids += piece
        trained += [keep] * len(piece)
    if isinstance(doc, str):  # a plain text ends with EOS; a chat's answers already end with </s>
        ids.append(tok.eos_token_id)
        trained.append(True)
    return ids, trained


def cosine_lr(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warmup then cosine decay to 10% of `peak`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def shuffled_batches(n: int, batch_size: int, gen: Any) -> Iterator[Any]:
    """Endless batches of row indices: a seeded permutation of `n` rows, reshuffled when the next batch would run
    past its end (the remainder is dropped, so every batch is full)."""
    import torch

    order, pos = torch.randperm(n, generator=gen), 0
    while True:
        if pos + batch_size > n:
            order, pos = torch.randperm(n, generator=gen), 0
        yield order[pos : pos + batch_size]
        pos += batch_size


def pretrain_lm(texts: Sequence[str | Sequence[Sequence[Any]]], tokenizer_dir: str | Path, out_dir: str | Path,
                cfg: LMConfig) -> dict[str, Any]:
    """Train the base LLaMA on `texts` and save it as an HF directory with the tokenizer; return a report."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    t0 = time.time()
    torch.manual_seed(cfg.seed)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    vocab = len(tok)  # SentencePiece pieces + <image>
    # Tokenize only what the schedule can read (about one pass): steps × batch rows of seq_len tokens.
    budget, docs, n_tok = cfg.steps * cfg.batch_size * cfg.seq_len, [], 0
    for t in texts:
        docs.append(tokenize_document(t, tok))
        n_tok += len(docs[-1][0])
        if n_tok >= budget:
            break
    ids, labels = pack_documents(docs, cfg.seq_len, pad_id=tok.unk_token_id)
    n_rows = ids.shape[0]

    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings, rms_norm_eps=1e-5, tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.unk_token_id,
    ))
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(cfg.seed)
    batches, losses = shuffled_batches(n_rows, cfg.batch_size, gen), []
    model.train()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    for step, idx in zip(range(cfg.steps), batches):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, cfg.steps, cfg.lr, cfg.warmup)
        with autocast:
            loss = model(input_ids=ids[idx], labels=labels[idx]).loss  # labels shift inside the model
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 100 == 0 or step == cfg.steps - 1:
            log.info("lm step %d/%d loss %.4f", step, cfg.steps, loss.item())

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    for f in Path(tokenizer_dir).iterdir():
        if f.is_file():
            shutil.copy2(f, out / f.name)
    tail = losses[-20:]
    return {"docs": len(docs), "rows": n_rows, "tokens": int((labels != IGNORE_INDEX).sum()), "steps": cfg.steps,
            "final_loss": round(sum(tail) / len(tail), 4), "seconds": round(time.time() - t0, 1),
            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2), "config": asdict(cfg)}
