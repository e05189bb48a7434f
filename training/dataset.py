"""LLaVA-format data → (input_ids, labels, pixel_values), with the runtime's prompt and tokenization.

Contract:
- `load_records(path)` reads LLaVA JSON (a list, or JSON lines) of `{id, image?, conversations: [{from, value}]}`
  where `from` is human|gpt (user|assistant accepted) and `<image>` marks where images go; `image` is a path
  (or a list of paths) relative to the image root. Samples without `image` are text-only. Malformed records
  raise `UsageError` naming the record.
- `encode(pieces, ...)` tokenizes a rendered conversation (`llava_local.templates`) the way the runtime feeds
  it to llama.cpp: the text between images chunk by chunk, BOS only on the first chunk, and one `<image>`
  placeholder id per image token. Labels keep only `trainable` pieces (answers + their end token); BOS,
  system, user text and image slots are IGNORE (-100). Labels are aligned with input_ids (the loss shifts).
- The label mask is derived by tokenizing every piece boundary as a prefix of its chunk. If a prefix does not
  tokenize to a prefix of the chunk (a boundary falls inside a token), that is a *tokenization mismatch* and
  raises `TemplateError`: LLaVA only warns and masks the whole sample, and users get a loss stuck at 0.
- `LlavaDataset[i]` returns a dict of tensors; samples longer than `context_length` are truncated (never inside
  an image span; cut images are dropped) and counted in `dataset.truncated`.
- `collate(batch, pad_id)` right-pads a micro-batch and concatenates the images in order of appearance.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llava_local.errors import ImageError, TemplateError, UsageError
from llava_local.preprocess import PreprocessConfig, preprocess
from llava_local.templates import IMAGE_TOKEN, ChatTemplate, Piece, Turn

IGNORE_INDEX = -100
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


@dataclass(frozen=True)
class Sample:
    """One conversation: image files (in order of their `<image>` marks) and alternating turns."""

    id: str
    images: tuple[str, ...]
    turns: tuple[Turn, ...]


def load_records(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path).expanduser()
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix == ".jsonl":
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            records = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"data.json {p} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(records, list):
        raise UsageError(f"data.json {p} must hold a list of LLaVA records")
    return records


def parse_record(rec: Any, index: int) -> Sample:
    """Validate one LLaVA record; `<image>` marks move to the start of their message, as LLaVA does."""
    if not isinstance(rec, dict) or not isinstance(rec.get("conversations"), list):
        raise UsageError(f"record {index} must be an object with a 'conversations' list")
    sid = str(rec.get("id", index))
    image = rec.get("image")
    images = tuple([image] if isinstance(image, str) else (image or []))
    msgs = rec["conversations"]
    if msgs and isinstance(msgs[0], dict) and ROLES.get(msgs[0].get("from")) == "assistant":
        msgs = msgs[1:]  # LLaVA skips a leading gpt message
    turns: list[Turn] = []
    for j, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("value"), str) or m.get("from") not in ROLES:
            raise UsageError(f"record {sid}: message {j} needs 'from' (human|gpt) and a string 'value'")
        role = ROLES[m["from"]]
        if role != ("user" if j % 2 == 0 else "assistant"):
            raise UsageError(f"record {sid}: messages must alternate human/gpt, human first (message {j})")
        value = m["value"]
        n = value.count(IMAGE_TOKEN)
        if n and role != "user":
            raise UsageError(f"record {sid}: <image> appears in a gpt message")
        if n:
            value = value.replace(IMAGE_TOKEN + "\n", "").replace("\n" + IMAGE_TOKEN, "").replace(IMAGE_TOKEN, "")
            value = value.strip()
        turns.append(Turn(role, value, n))
    if turns and turns[-1].role == "user":
        turns.pop()  # nothing to learn from an unanswered question
    if not turns:
        raise UsageError(f"record {sid}: no human/gpt exchange to train on")
    marks = sum(t.n_images for t in turns)
    if images and marks == 0:
        # Captions-only data often omits the mark; LLaVA puts the image before the first question.
        turns[0] = Turn("user", turns[0].text, len(images))
    elif marks != len(images):
        raise UsageError(f"record {sid}: {marks} <image> marks but {len(images)} image files")
    return Sample(sid, images, tuple(turns))


def _tok(tokenizer, text: str, first: bool) -> list[int]:
    if not text and not first:
        return []
    return list(tokenizer(text, add_special_tokens=first)["input_ids"])


def encode(pieces: list[Piece], tokenizer, image_token_id: int, n_image_tokens: int,
           sample_id: str = "?") -> tuple[list[int], list[int]]:
    """Rendered pieces → (input_ids, labels); raises TemplateError on a tokenization mismatch."""
    chunks: list[list[Piece]] = [[]]
    for p in pieces:
        if p.kind == "image":
            chunks.append([])
        else:
            chunks[-1].append(p)
    ids: list[int] = []
    labels: list[int] = []
    for k, chunk in enumerate(chunks):
        if k > 0:
            ids += [image_token_id] * n_image_tokens
            labels += [IGNORE_INDEX] * n_image_tokens
        first = k == 0
        full = _tok(tokenizer, "".join(p.text for p in chunk), first)
        start, text = 0, ""
        for j, p in enumerate(chunk):
            text += p.text
            prefix = full if j == len(chunk) - 1 else _tok(tokenizer, text, first)
            if full[: len(prefix)] != prefix:
                raise TemplateError(
                    f"sample {sample_id}: tokenization mismatch at {text[-30:]!r}: the text up to this piece does "
                    "not tokenize to a prefix of the whole prompt, so the label mask would be wrong; fix the "
                    "template or the tokenizer (LLaVA would silently train this sample on nothing)")
            span = full[start: len(prefix)]
            ids += span
            labels += span if p.trainable else [IGNORE_INDEX] * len(span)
            start = len(prefix)
        if not chunk and first:
            ids += full  # an empty first chunk is just BOS
            labels += [IGNORE_INDEX] * len(full)
    if first_is_bos(tokenizer, ids):
        labels[0] = IGNORE_INDEX
    return ids, labels


def first_is_bos(tokenizer, ids: list[int]) -> bool:
    return bool(ids) and tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id


def truncate(ids: list[int], labels: list[int], n_images: int, image_token_id: int, n_image_tokens: int,
             max_len: int) -> tuple[list[int], list[int], int]:
    """Cut to `max_len` tokens, never inside an image span; returns (ids, labels, images kept)."""
    if len(ids) <= max_len:
        return ids, labels, n_images
    cut = max_len
    # Image spans are runs of `n_image_tokens` placeholders; back off to the start of a span we would split.
    kept = 0
    i = 0
    while i < len(ids):
        if ids[i] == image_token_id:
            if i + n_image_tokens > cut:
                cut = min(cut, i)
                break
            kept += 1
            i += n_image_tokens
        else:
            if i >= cut:
                break
            i += 1
    return ids[:cut], labels[:cut], kept


class LlavaDataset(torch.utils.data.Dataset):
    """Lazy: images are read and samples tokenized when fetched (so 665K samples start instantly)."""

    def __init__(self, records: list[dict[str, Any]], image_root: str | Path, tokenizer, template: ChatTemplate,
                 preprocess_cfg: PreprocessConfig, n_image_tokens: int, context_length: int) -> None:
        self.samples = [parse_record(r, i) for i, r in enumerate(records)]
        self.image_root = Path(image_root).expanduser()
        self.tokenizer = tokenizer
        self.template = template
        self.preprocess_cfg = preprocess_cfg
        self.n_image_tokens = n_image_tokens
        self.context_length = context_length
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.truncated = 0  # samples cut to context_length (counted in the process that fetched them)

    def __len__(self) -> int:
        return len(self.samples)

    def approx_lengths(self) -> list[int]:
        """Cheap length estimates for grouping: ~4 characters per token plus the image tokens."""
        return [sum(len(t.text) for t in s.turns) // 4 + len(s.images) * self.n_image_tokens for s in self.samples]

    def tokenize(self, s: Sample) -> tuple[list[int], list[int]]:
        pieces = self.template.render(list(s.turns), add_generation_prompt=False)
        return encode(pieces, self.tokenizer, self.image_token_id, self.n_image_tokens, s.id)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.samples[i]
        ids, labels = self.tokenize(s)
        truncated = len(ids) > self.context_length
        ids, labels, kept = truncate(ids, labels, len(s.images), self.image_token_id, self.n_image_tokens,
                                     self.context_length)
        self.truncated += int(truncated)
        pixels = []
        for name in s.images[:kept]:
            try:
                pixels.append(preprocess(self.image_root / name, self.preprocess_cfg))
            except ImageError as e:
                raise ImageError(f"sample {s.id}: {e}; check data.image_root") from None
        size = self.preprocess_cfg.size
        pv = np.concatenate(pixels) if pixels else np.zeros((0, 3, size, size), np.float32)
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "pixel_values": torch.from_numpy(pv),
                "truncated": truncated}


def collate(batch: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Right-pad to the longest sample; images of the micro-batch in order (N, 3, S, S)."""
    n = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), n), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    for i, b in enumerate(batch):
        k = len(b["input_ids"])
        ids[i, :k], labels[i, :k], mask[i, :k] = b["input_ids"], b["labels"], 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask,
            "pixel_values": torch.cat([b["pixel_values"] for b in batch]),
            "truncated": sum(int(b["truncated"]) for b in batch)}
