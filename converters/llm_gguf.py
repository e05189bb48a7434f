"""HF LLaMA weights + tokenizer → an F32 or F16 GGUF written with gguf-py (tech memo §3).

Contract: `write_gguf(ckpt, path, ftype="f16"|"f32", name=...)` writes a GGUF that llama.cpp loads as arch
"llama" and that reproduces transformers' logits:
- q_proj / k_proj rows are permuted from HF's rotate-half RoPE to llama.cpp's adjacent-pair RoPE
  (`permute`, k with the KV head count); v / o are not.
- tensors are renamed through gguf-py's LLaMA table (`gguf_name`); rotary buffers are skipped; an unmapped
  tensor is a ConversionError. 1-D tensors (norms) stay F32 in an F16 file.
- the tokenizer: SentencePiece (`tokenizer.model`: tokenizer model "llama", real scores and piece types), a
  SentencePiece-style BPE in `tokenizer.json` only (what transformers 5 saves for LLaMA: Metaspace "▁", byte
  fallback, merges) as model "llama" with scores from the merge ranks (`merge_scores`), `<0xHH>` BYTE pieces
  and add_bos / add_space_prefix read from what the HF tokenizer does, or a byte-level BPE (`tokenizer.json`:
  model "gpt2", pre-tokenizer "gpt-2", merges). Added tokens (`<image>`) become CONTROL tokens at their ids;
  the list is padded with UNUSED `[PAD<i>]` up to the embedding rows.
- metadata: context length, the chat template as a Jinja string (`tokenizer.chat_template`) plus its
  llava-local name (`llava_local.template`), BOS/EOS/UNK/PAD ids, add_bos true / add_eos false.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llava_local.errors import ConversionError

from .layouts import Checkpoint

FTYPES = {"f32": 0, "f16": 1}  # gguf.LlamaFileType ALL_F32 / MOSTLY_F16
SKIP_SUFFIXES = ("rotary_emb.inv_freq",)


def permute(w: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """HF rotate-half rows → llama.cpp interleaved pairs (convert_hf_to_gguf's `LlamaModel.permute`)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def gguf_name(hf_name: str, n_layers: int) -> str | None:
    """GGUF tensor name for a canonical LlamaForCausalLM name; None when deliberately skipped."""
    import gguf

    if hf_name.endswith(SKIP_SUFFIXES):
        return None
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    name = tmap.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if name is None:
        raise ConversionError(f"cannot map LLM tensor {hf_name!r} to a GGUF name (not a LLaMA model?)")
    return name


@dataclass(frozen=True)
class Vocab:
    model: str  # "llama" (SentencePiece) | "gpt2" (byte-level BPE)
    pre: str
    tokens: list[bytes]
    scores: list[float]
    types: list[int]
    merges: list[str]
    bos: int | None
    eos: int | None
    unk: int | None
    pad: int | None
    add_bos: bool = True
    add_space_prefix: bool | None = None  # None: llama.cpp's default (true for "llama")


def _json_nodes(node: Any) -> list[dict]:
    """Every component of a tokenizer.json normalizer/pre-tokenizer, flattening `Sequence`s."""
    if not isinstance(node, dict):
        return []
    inner = node.get("normalizers") or node.get("pretokenizers") or []
    return [node, *[n for child in inner for n in _json_nodes(child)]]


def tokenizer_json_kind(data: dict) -> str | None:
    """"gpt2" for a byte-level BPE, "spm" for a SentencePiece-style BPE (pieces carry "▁" for spaces, unknown
    characters fall back to `<0xHH>` byte pieces: LLaMA tokenizers saved by transformers), else None."""
    bpe = data.get("model") or {}
    if bpe.get("type") != "BPE":
        return None
    parts = _json_nodes(data.get("pre_tokenizer")) + _json_nodes(data.get("normalizer"))
    if any(p.get("type") == "ByteLevel" for p in parts):
        return "gpt2"
    metaspace = any(p.get("type") == "Metaspace" for p in parts) or any(
        p.get("type") == "Replace" and p.get("pattern", {}).get("String") == " " and p.get("content") == "\u2581"
        for p in parts)
    return "spm" if metaspace and bpe.get("byte_fallback") and not bpe.get("ignore_merges") else None


def merge_scores(merges: list[str], vocab: dict[str, int]) -> dict[int, float]:
    """SentencePiece scores that make llama.cpp's SPM tokenizer repeat the BPE merges.

    HF's BPE merges, within a word, the adjacent pair of lowest merge rank; llama.cpp's SPM tokenizer merges
    the adjacent pair whose concatenation is a piece of highest score (leftmost on ties). Scoring each piece
    -rank of the first merge that produces it makes both pick the same pair, for vocabularies whose merges
    are every split of a piece into two pieces (those converted from SentencePiece, as LLaMA's are).
    """
    scores: dict[int, float] = {}
    for rank, merge in enumerate(merges):
        left, right = merge.split(" ", 1)
        piece = vocab.get(left + right)
        if piece is not None and piece not in scores:
            scores[piece] = -float(rank)
    return scores


def _spm_json_tokens(data: dict, hf: Any) -> tuple[dict[int, tuple[bytes, float, int]], bool]:
    """Pieces, scores and types of a SentencePiece-style tokenizer.json, and whether a space is prefixed."""
    import gguf

    T = gguf.TokenType
    bpe = data["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in bpe.get("merges", [])]
    scores = merge_scores(merges, bpe["vocab"])
    floor = -float(len(merges))  # pieces no merge produces (single characters) never take part in a merge
    tokens: dict[int, tuple[bytes, float, int]] = {}
    for piece, i in bpe["vocab"].items():
        i = int(i)
        if re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", piece):
            tokens[i] = (piece.encode("utf-8"), 0.0, int(T.BYTE))
        elif i == hf.unk_token_id:
            tokens[i] = (piece.encode("utf-8"), 0.0, int(T.UNKNOWN))
        else:
            tokens[i] = (piece.encode("utf-8"), scores.get(i, floor), int(T.NORMAL))
    # llama.cpp prefixes a space ("▁") to text at the start and after each special token; HF's Metaspace does
    # so for "always" (and a "first" scheme only at the start): read what the tokenizer actually does.
    first = hf.convert_ids_to_tokens(hf("a", add_special_tokens=False).input_ids)[:1]
    return tokens, bool(first) and first[0].startswith("\u2581")


def load_vocab(tokenizer_dir: Path, n_rows: int) -> Vocab:
    """The GGUF vocabulary of a tokenizer dir, padded to `n_rows` entries (the embedding rows)."""
    import gguf
    from transformers import AutoTokenizer

    try:
        hf = AutoTokenizer.from_pretrained(tokenizer_dir)
    except Exception as e:  # transformers raises many types for a broken tokenizer
        raise ConversionError(f"{tokenizer_dir}: cannot load the tokenizer ({e})") from None
    T = gguf.TokenType
    tokens: dict[int, tuple[bytes, float, int]] = {}
    merges: list[str] = []
    add_bos, space_prefix = True, None
    if (tokenizer_dir / "tokenizer.model").is_file():
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(tokenizer_dir / "tokenizer.model"))
        for i in range(sp.vocab_size()):
            kind = (T.UNKNOWN if sp.is_unknown(i) else T.CONTROL if sp.is_control(i) else
                    T.UNUSED if sp.is_unused(i) else T.BYTE if sp.is_byte(i) else T.NORMAL)
            tokens[i] = (sp.id_to_piece(i).encode("utf-8"), float(sp.get_score(i)), int(kind))
        model, pre = "llama", "default"
    else:
        data = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
        kind = tokenizer_json_kind(data)
        if kind is None:
            raise ConversionError(f"{tokenizer_dir}: tokenizer.json must be a byte-level BPE or a SentencePiece-style "
                                  "BPE (Metaspace with byte fallback); this one is neither")
        if kind == "spm":
            tokens, space_prefix = _spm_json_tokens(data, hf)
            model, pre = "llama", "default"
            with_bos = hf("a", add_special_tokens=True).input_ids
            add_bos = hf.bos_token_id is not None and with_bos[:1] == [hf.bos_token_id]
        else:
            bpe = data["model"]
            for piece, i in bpe["vocab"].items():
                tokens[int(i)] = (piece.encode("utf-8"), 0.0, int(T.NORMAL))
            merges = [m if isinstance(m, str) else " ".join(m) for m in bpe.get("merges", [])]
            model, pre = "gpt2", "gpt-2"
    for i, added in hf.added_tokens_decoder.items():
        if i in tokens and tokens[i][2] != T.NORMAL:
            continue  # SentencePiece's own <unk>/<s>/</s>
        kind = T.CONTROL if added.special else T.USER_DEFINED
        tokens[int(i)] = (added.content.encode("utf-8"), -1000.0, int(kind))
    n = max(tokens) + 1
    if n > n_rows:
        raise ConversionError(f"{tokenizer_dir}: the tokenizer has {n} tokens but the embedding only {n_rows} rows")
    filled = [tokens.get(i, (f"[PAD{i}]".encode(), -1000.0, int(T.UNUSED))) for i in range(n_rows)]
    return Vocab(
        model=model, pre=pre, tokens=[t[0] for t in filled], scores=[t[1] for t in filled],
        types=[t[2] for t in filled], merges=merges, bos=hf.bos_token_id, eos=hf.eos_token_id,
        unk=hf.unk_token_id, pad=hf.pad_token_id, add_bos=add_bos, add_space_prefix=space_prefix,
    )


def jinja_template(template_name: str) -> str | None:
    """A Jinja rendering of a llava-local template for other llama.cpp front-ends (None if not expressible)."""
    from llava_local.templates import get_template

    t = get_template(template_name)
    if t.style == "two":
        user, assistant = t.roles
        return (
            "{% set sys = (messages[0]['content'] if messages[0]['role'] == 'system' else " + json.dumps(t.system)
            + ") %}"
            "{{ sys }}{{ ' ' if sys else '' }}"
            "{% for m in messages if m['role'] != 'system' %}"
            "{% if m['role'] == 'user' %}" + user + ": {{ m['content'] }}" + t.sep +
            "{% else %}" + assistant + ": {{ m['content'] }}" + t.sep2 + "{% endif %}"
            "{% endfor %}{% if add_generation_prompt %}" + assistant + ":{% endif %}"
        )
    if t.style == "chatml":
        return (
            "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
        )
    return None


def _kv(writer: Any, ckpt: Checkpoint, vocab: Vocab, ftype: str, name: str) -> None:
    cfg = ckpt.text_config
    n_head, n_kv = int(cfg.num_attention_heads), int(cfg.num_key_value_heads or cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head)
    rope = getattr(cfg, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ConversionError(f"RoPE scaling {rope.get('rope_type')!r} is not supported by this converter")
    writer.add_name(name)
    writer.add_context_length(int(ckpt.context_length))
    writer.add_embedding_length(int(cfg.hidden_size))
    writer.add_block_count(int(cfg.num_hidden_layers))
    writer.add_feed_forward_length(int(cfg.intermediate_size))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(head_dim)
    if head_dim * n_head != cfg.hidden_size:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    writer.add_vocab_size(len(vocab.tokens))
    writer.add_file_type(FTYPES[ftype])
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    for add, value in ((writer.add_bos_token_id, vocab.bos), (writer.add_eos_token_id, vocab.eos),
                       (writer.add_unk_token_id, vocab.unk), (writer.add_pad_token_id, vocab.pad)):
        if value is not None:
            add(int(value))
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(False)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    jinja = jinja_template(ckpt.template)
    if jinja:
        writer.add_chat_template(jinja)
    writer.add_string("llava_local.template", ckpt.template)
    if ckpt.image_token_id is not None:
        writer.add_uint32("llava_local.image_token_id", int(ckpt.image_token_id))


def llm_tensors(ckpt: Checkpoint) -> list[tuple[str, str, np.ndarray]]:
    """(hf name, gguf name, float32 array in HF layout) for every LLM tensor, q/k already permuted."""
    cfg = ckpt.text_config
    n_head, n_kv = int(cfg.num_attention_heads), int(cfg.num_key_value_heads or cfg.num_attention_heads)
    out = []
    for hf_name in sorted(ckpt.llm_state):
        name = gguf_name(hf_name, int(cfg.num_hidden_layers))
        if name is None:
            continue
        arr = ckpt.llm_state[hf_name].detach().float().numpy()
        if ".self_attn.q_proj." in hf_name:
            arr = permute(arr, n_head, n_head)
        elif ".self_attn.k_proj." in hf_name:
            arr = permute(arr, n_head, n_kv)
        out.append((hf_name, name, arr))
    return out


def write_gguf(ckpt: Checkpoint, path: Path, ftype: str = "f16", name: str = "llava-local") -> Path:
    """Write the LLM of `ckpt` as an F32/F16 GGUF at `path`."""
    import gguf

    if ftype not in FTYPES:
        raise ConversionError(f"GGUF base type must be one of {list(FTYPES)}, not {ftype!r}")
    rows = int(ckpt.llm_state["model.embed_tokens.weight"].shape[0])
    vocab = load_vocab(ckpt.tokenizer_dir, rows)
    writer = gguf.GGUFWriter(str(path), arch="llama", use_temp_file=False)
    _kv(writer, ckpt, vocab, ftype, name)
    for _, gname, arr in llm_tensors(ckpt):
        if ftype == "f16" and arr.ndim > 1:
            arr = arr.astype(np.float16)
        writer.add_tensor(gname, np.ascontiguousarray(arr))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
