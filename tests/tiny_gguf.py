"""One writer for the random LLaMA GGUFs that tests run through llama.cpp (runtime and data-pipeline tests).

Contract: `write_llama_gguf(path, vocab, ...)` writes an F32 LLaMA GGUF with gguf-py (tech memo §3, §8) from
seeded numpy weights: the given SentencePiece-layout vocabulary (`Vocab`: pieces, scores, llama.cpp token
types), BOS 1 / EOS 2 / UNK 0, and optionally a chat template. Weights are drawn in a fixed order
(embeddings, then per block q k v o gate up down, then the output matrix), so a seed gives the same model
every time. Nothing is trained: answers are random but deterministic.

Two weight scales: `weight_std=None` draws each matrix at 1/sqrt(fan-in) with a large output scale (peaky
logits, so greedy answers never hinge on 1e-6 ties: what the runtime tests compare); a number draws every
matrix at that std (small logits, varied sampled text: what the data-pipeline tests want).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Vocab:
    tokens: list[str]
    scores: list[float]
    types: list[int]  # llama.cpp token types: 1 normal, 2 unknown, 3 control, 6 byte


def write_llama_gguf(path: Path, vocab: Vocab, *, name: str = "tiny-test", n_embd: int = 64, n_layer: int = 2,
                     n_head: int = 4, n_kv: int = 2, n_ff: int = 128, ctx: int = 512, seed: int = 0,
                     weight_std: float | None = None, chat_template: str | None = None) -> Path:
    """Write the GGUF and return its path."""
    import gguf

    n_vocab = len(vocab.tokens)
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch="llama", use_temp_file=False)
    w.add_name(name)
    w.add_context_length(ctx)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(0)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(vocab.tokens)
    w.add_token_scores(vocab.scores)
    w.add_token_types(vocab.types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    if chat_template is not None:
        w.add_chat_template(chat_template)

    def t(name: str, *shape: int, scale: float | None = None) -> None:
        if weight_std is not None:
            scale = weight_std
        elif scale is None:
            scale = 1.0 / np.sqrt(shape[-1])
        w.add_tensor(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    hd = n_embd // n_head
    t("token_embd.weight", n_vocab, n_embd, scale=1.0)
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, np.float32))
        t(f"blk.{i}.attn_q.weight", n_embd, n_embd)
        t(f"blk.{i}.attn_k.weight", n_kv * hd, n_embd)
        t(f"blk.{i}.attn_v.weight", n_kv * hd, n_embd)
        t(f"blk.{i}.attn_output.weight", n_embd, n_embd)
        t(f"blk.{i}.ffn_gate.weight", n_ff, n_embd)
        t(f"blk.{i}.ffn_up.weight", n_ff, n_embd)
        t(f"blk.{i}.ffn_down.weight", n_embd, n_ff)
    w.add_tensor("output_norm.weight", np.ones(n_embd, np.float32))
    t("output.weight", n_vocab, n_embd, scale=4.0 / np.sqrt(n_embd))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
