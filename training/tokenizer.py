"""Train tokenizers on the spot: a LLaMA-style SentencePiece model or a byte-level BPE.

Contract:
- `train_sentencepiece(texts, out_dir, vocab_size=...)` trains SentencePiece with LLaMA's settings (BPE,
  byte fallback, identity normalisation, split digits, unk 0 / bos 1 / eos 2, no pad, whitespace-only pieces
  allowed, extra whitespace kept) and writes a transformers tokenizer directory: `tokenizer.model` +
  `tokenizer_config.json` (`LlamaTokenizer`), with `<image>` appended as a special token right after the last
  piece, as llava-hf does. `AutoTokenizer.from_pretrained(out_dir)` then gives SentencePiece's ids, and
  the same ids as llama.cpp over the converted GGUF, also after special tokens (`legacy: true`).
- `train_byte_bpe(texts, out_dir, vocab_size=...)` trains a GPT-2-style byte-level BPE with the `tokenizers`
  library and writes `tokenizer.json` + `tokenizer_config.json` (BOS `<s>` prepended, `<image>` special).
- `tiny_corpus(n, seed)` makes a deterministic English corpus for tests and tiny checkpoints.

Both return `out_dir`. The demo-model recipe reuses these trainers on real text; nothing here is test-only.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Iterable
from pathlib import Path

IMAGE_TOKEN = "<image>"
BOS, EOS, UNK = "<s>", "</s>", "<unk>"


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def train_sentencepiece(
    texts: Iterable[str],
    out_dir: str | Path,
    vocab_size: int = 512,
    *,
    add_image_token: bool = True,
    model_max_length: int = 2048,
) -> Path:
    """Train a LLaMA-like SentencePiece BPE on `texts`; write an HF tokenizer dir and return it.

    `vocab_size` counts SentencePiece pieces (256 byte pieces + 3 specials + merges), so ~400 is the floor for
    a small English corpus. `<image>` (when `add_image_token`) gets id `vocab_size`.
    """
    import sentencepiece as spm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # SentencePiece reads one sentence per line; newlines inside a text become separate lines. Trained from an
    # iterator into memory, the model records no input file or output prefix, so one corpus gives the same bytes
    # wherever it runs (a temporary path in the model made every rebuild's checkpoints differ).
    lines = (line for t in texts for line in t.splitlines() if line.strip())
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=lines,
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    (out / "tokenizer.model").write_bytes(model.getvalue())

    added = {}
    if add_image_token:
        added[str(vocab_size)] = {"content": IMAGE_TOKEN, "lstrip": False, "normalized": False, "rstrip": False,
                                  "single_word": False, "special": True}
    _write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": UNK,
        "pad_token": None,
        "add_bos_token": True,
        "add_eos_token": False,
        # legacy=True: text after a special token gets SentencePiece's "▁" prefix, as in LLaMA's original
        # tokenizer, LLaVA's training and llama.cpp; transformers' non-legacy mode would split "</s>USER" as
        # "</s>","US","ER" while llama.cpp says "</s>","▁USER".
        "legacy": True,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "added_tokens_decoder": added,
    })
    _write_json(out / "special_tokens_map.json", {"bos_token": BOS, "eos_token": EOS, "unk_token": UNK})
    return out


def train_byte_bpe(
    texts: Iterable[str],
    out_dir: str | Path,
    vocab_size: int = 512,
    *,
    add_image_token: bool = True,
    model_max_length: int = 2048,
) -> Path:
    """Train a GPT-2-style byte-level BPE (`tokenizers`); write `tokenizer.json` + config and return the dir.

    Ids: `<unk>` 0, `<s>` 1, `<eos>` 2, then the 256 byte symbols and merges; `<image>` last. The post-processor
    prepends `<s>` like LLaMA's tokenizer, so both tokenizer kinds put BOS first.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    # GPT-2 regex split + byte mapping; llama.cpp's "gpt-2" pre-tokenizer uses the same regex.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[UNK, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    if add_image_token:
        tok.add_special_tokens([IMAGE_TOKEN])
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)],
    )
    tok.save(str(out / "tokenizer.json"))
    _write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": UNK,
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
    })
    return out


# A tiny synthetic world: enough variety for a few hundred byte-fallback BPE merges.
_COLOURS = ["red", "green", "blue", "yellow", "black", "white", "purple", "orange", "grey", "brown"]
_SHAPES = ["circle", "square", "triangle", "star", "box", "ball", "cube", "ring", "line", "cross"]
_PLACES = ["on the left", "on the right", "at the top", "at the bottom", "in the middle", "near the corner"]
_VERBS = ["is", "sits", "appears", "lies", "stands", "floats"]
_QUESTIONS = ["What is in the image?", "What colour is the {s}?", "How many shapes are there?",
              "Where is the {c} {s}?", "Describe the picture.", "Is there a {s}?"]


def tiny_corpus(n: int = 400, seed: int = 0) -> list[str]:
    """`n` short English sentences about coloured shapes (deterministic by `seed`), with digits and newlines."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        c, s, p, v = rng.choice(_COLOURS), rng.choice(_SHAPES), rng.choice(_PLACES), rng.choice(_VERBS)
        k = rng.randint(1, 12)
        kind = i % 4
        if kind == 0:
            lines.append(f"A {c} {s} {v} {p}.")
        elif kind == 1:
            lines.append(f"There are {k} shapes. The {c} {s} {v} {p}, and it is {rng.randint(2, 99)} pixels wide.")
        elif kind == 2:
            q = rng.choice(_QUESTIONS).format(c=c, s=s)
            lines.append(f"USER: {q}\nASSISTANT: The {c} {s} {v} {p}.")
        else:
            lines.append(f"I see a {c} {s} and a {rng.choice(_COLOURS)} {rng.choice(_SHAPES)}; {k} in total!")
    return lines
