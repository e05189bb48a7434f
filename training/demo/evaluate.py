"""Held-out evaluation on the synthetic world: the shipped bundle and the torch model, same questions.

Contract:
- `eval_set(n, seed, phrasing)` → the questions: for scenes `make_scene(seed, 0..n-1)` one teacher question per type
  (`corpus.QTYPES`), each with the scene, its rendered PNG bytes and the canonical answer. Deterministic. With
  `phrasing="heldout"` the same scenes are asked in `phrasings.HELDOUT_ASK`'s wordings, asked without the short-answer
  instruction and scored by `phrasings.score_natural`.
- `score(qa, prediction, scene)` → bool. Short answers: exact match after lower-casing and stripping
  punctuation ("Red." == "red"). Descriptions ("short description facts"): the checker finds no false claim
  in the text and the inventory it names ("two red circles and a blue square") equals the scene's, as a
  multiset of colour + shape.
- `evaluate_bundle(model, n, seed)` asks every question in a fresh conversation through `llava_local`'s
  `ChatSession` (greedy), the engine behind `llava-local chat`; `evaluate_torch(checkpoint, n, seed)` asks
  the same questions of the layout-c checkpoint with transformers' `LlavaForConditionalGeneration`
  (greedy, batched); `evaluate_text(llm_dir, n, seed)` asks them of a text-only LLaMA (the recipe's base
  LLaMA) with the scene written out where the image goes, in the layout of its training chats. All return an
  `EvalResult` (accuracy per type, overall, every item).

This module imports torch only inside `evaluate_torch` and `evaluate_text`.
"""

from __future__ import annotations

import io
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.datagen import teacher
from training.datagen.checker import check_text
from training.datagen.render import render
from training.datagen.world import COLOURS, NUMBER_WORDS, SHAPES, Scene, make_scene

from .corpus import QTYPES, eval_items, grounded_prompt, prompt_of

IMAGE_SIZE = 96  # rendered side in pixels; the bundle's preprocessing resizes if it wants another size


PHRASINGS = ("teacher", "heldout")  # the teacher's own wording (+ the short-answer instruction), or `phrasings.py`'s


@dataclass(frozen=True)
class EvalItem:
    scene: Scene
    png: bytes
    qa: teacher.QA
    phrasing: str = "teacher"

    @property
    def prompt(self) -> str:
        # held-out questions come as a user types them: no "answer with a single word" instruction
        return self.qa.question if self.phrasing == "heldout" else prompt_of(self.qa)

    def correct(self, prediction: str) -> bool:
        if self.phrasing == "heldout":
            from .phrasings import score_natural

            return score_natural(self.qa, self.qa.question, prediction, self.scene)
        return score(self.qa, prediction, self.scene)


@dataclass
class EvalResult:
    """Per-item outcomes; accuracies are fractions in [0, 1]."""

    items: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, item: EvalItem, prediction: str) -> None:
        self.items.append({"scene": item.scene.key, "type": item.qa.qtype, "question": item.prompt,
                           "answer": item.qa.answer, "prediction": prediction,
                           "correct": item.correct(prediction)})

    def per_type(self) -> dict[str, tuple[int, int]]:
        """type → (correct, total), in QTYPES order."""
        out: dict[str, list[int]] = {}
        for it in self.items:
            c = out.setdefault(it["type"], [0, 0])
            c[0] += int(it["correct"])
            c[1] += 1
        return {t: (out[t][0], out[t][1]) for t in QTYPES if t in out}

    def overall(self) -> float:
        return sum(it["correct"] for it in self.items) / max(1, len(self.items))

    def summary(self) -> dict[str, Any]:
        return {"overall": round(self.overall(), 4), "n_questions": len(self.items),
                "per_type": {t: round(c / n, 4) for t, (c, n) in self.per_type().items()},
                "min_type": round(min((c / n for c, n in self.per_type().values()), default=0.0), 4),
                "seconds": round(self.seconds, 1)}


def eval_set(n: int, seed: int, qtypes: Sequence[str] = QTYPES, phrasing: str = "teacher") -> list[EvalItem]:
    """The questions for scenes 0..n-1 of world `seed` (one per type and scene where the scene allows it), in the
    teacher's wording or the held-out one (`phrasings.HELDOUT_ASK`: the same scenes, other words)."""
    if phrasing not in PHRASINGS:
        raise ValueError(f"phrasing must be one of {PHRASINGS}, not {phrasing!r}")
    items = []
    for i in range(n):
        scene = make_scene(seed, i)
        buf = io.BytesIO()
        render(scene, IMAGE_SIZE).save(buf, format="PNG")
        rng = random.Random(f"demo-eval:{seed}:{i}")
        if phrasing == "heldout":
            from .phrasings import HELDOUT_ASK

            qas = [qa for t in qtypes if (qa := teacher.sample_qa(scene, rng, t, HELDOUT_ASK)) is not None]
        else:
            qas = eval_items(scene, rng, qtypes)
        items += [EvalItem(scene, buf.getvalue(), qa, phrasing) for qa in qas]
    return items


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


_NUMS = {w: i for i, w in enumerate(NUMBER_WORDS)} | {"a": 1, "an": 1}
_INVENTORY = re.compile(
    rf"\b(?P<n>{'|'.join(_NUMS)}|\d+)\s+(?:(?:small|large)\s+)?(?P<colour>{'|'.join(COLOURS)})\s+"
    rf"(?P<shape>{'|'.join(SHAPES)})s?\b")


def inventory(text: str) -> Counter:
    """(colour, shape) → count named in a description ("two red circles and a blue square")."""
    out: Counter = Counter()
    for m in _INVENTORY.finditer(text.lower()):
        n = _NUMS.get(m["n"])
        out[(m["colour"], m["shape"])] += int(m["n"]) if n is None else n
    return out


def score(qa: teacher.QA, prediction: str, scene: Scene) -> bool:
    """Is `prediction` a correct answer to `qa` about `scene`? (see the module docstring)"""
    if qa.qtype == "description":
        truth = Counter((o.colour, o.shape) for o in scene.objects)
        return inventory(prediction) == truth and check_text(scene, prediction).ok
    return _norm(prediction) == _norm(qa.answer)


def evaluate_bundle(model: str | Path | None, n: int, seed: int, *, device: str = "cpu", threads: int | None = None,
                    progress: Callable[[int, int], None] | None = None, phrasing: str = "teacher") -> EvalResult:
    """Every question in a fresh conversation through `llava_local.ChatSession`, greedy."""
    from llava_local import ChatSession, GenerationConfig, RuntimeConfig, open_model
    from llava_local.events import Finished

    items = eval_set(n, seed, phrasing=phrasing)
    result = EvalResult()
    t0 = time.time()
    # No disk cache: 300 synthetic images do not belong in the user's embedding cache.
    config = RuntimeConfig(device=device, n_threads=threads, embedding_cache=False)
    with open_model(None if model is None else str(model), config) as m:
        session = ChatSession(m, generation=GenerationConfig(temperature=0.0, max_tokens=64))
        for k, item in enumerate(items):
            session.clear()
            text = ""
            for ev in session.ask(item.prompt, images=[item.png]):
                if isinstance(ev, Finished):
                    text = ev.text
            result.add(item, text.strip())
            if progress:
                progress(k + 1, len(items))
    result.seconds = time.time() - t0
    return result


@dataclass
class TorchModel:
    """A layout-c checkpoint loaded for greedy answers: transformers' LlavaForConditionalGeneration (fp32, eval)
    with the tokenizer, preprocessing and template its `llava_local.json` names."""

    model: Any
    tok: Any
    pp: Any  # PreprocessConfig
    template: Any  # ChatTemplate
    n_image_tokens: int
    pad: int

    @classmethod
    def load(cls, checkpoint: str | Path) -> TorchModel:
        import json

        import torch
        from transformers import LlavaForConditionalGeneration

        from llava_local.preprocess import PreprocessConfig
        from llava_local.templates import get_template
        from training.model import load_tokenizer

        ckpt = Path(checkpoint)
        meta = json.loads((ckpt / "llava_local.json").read_text(encoding="utf-8"))
        tok = load_tokenizer(str(ckpt))
        model = LlavaForConditionalGeneration.from_pretrained(str(ckpt), dtype=torch.float32).eval()
        cfg = model.config
        n_img = (cfg.vision_config.image_size // cfg.vision_config.patch_size) ** 2 + (
            1 if cfg.vision_feature_select_strategy == "full" else 0)
        return cls(model, tok, PreprocessConfig.from_dict(meta["preprocess"]), get_template(meta["template"]), n_img,
                   tok.unk_token_id or 0)

    def encode(self, pieces: list[Any]) -> list[int]:
        """Rendered pieces → input ids, as training encodes them."""
        from training.dataset import encode

        return encode(pieces, self.tok, self.model.config.image_token_id, self.n_image_tokens)[0]

    def generate(self, seqs: list[list[int]], images: list[Any], max_new_tokens: int = 64) -> list[str]:
        """Greedy continuations of a batch of prompts (ids from `encode`), one image each (PNG bytes or PIL)."""
        import numpy as np
        import torch

        from llava_local.preprocess import preprocess

        ids, mask = _left_padded(seqs, self.pad)
        pixels = torch.from_numpy(np.concatenate([preprocess(im, self.pp) for im in images]))
        with torch.no_grad():
            out = self.model.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels,
                                      max_new_tokens=max_new_tokens, do_sample=False,
                                      eos_token_id=self.tok.eos_token_id, pad_token_id=self.pad)
        return _answers(out[:, ids.shape[1]:], self.tok)


def evaluate_torch(checkpoint: str | Path, n: int, seed: int, *, batch_size: int = 32,
                   progress: Callable[[int, int], None] | None = None, phrasing: str = "teacher",
                   qtypes: Sequence[str] = QTYPES) -> EvalResult:
    """The same questions through transformers' LlavaForConditionalGeneration (layout c), greedy, batched."""
    from llava_local.templates import Turn

    tm = TorchModel.load(checkpoint)

    def answer(batch: list[EvalItem]) -> list[str]:
        seqs = [tm.encode(tm.template.render([Turn("user", it.prompt, 1)], add_generation_prompt=True))
                for it in batch]
        return tm.generate(seqs, [it.png for it in batch])

    return _ask_in_batches(eval_set(n, seed, qtypes, phrasing), batch_size, answer, progress)


def text_prompt_ids(item: EvalItem, tok: Any) -> list[int]:
    """BOS + `corpus.grounded_prompt` for the item's scene and prompt, tokenized piece by piece as the base
    LLaMA's training tokenized its chats (`lm_pretrain.tokenize_document`)."""
    from .lm_pretrain import tokenize_document

    return tokenize_document(grounded_prompt(item.scene, item.prompt), tok)[0]


def evaluate_text(llm_dir: str | Path, n: int, seed: int, *, batch_size: int = 32,
                  progress: Callable[[int, int], None] | None = None, phrasing: str = "teacher") -> EvalResult:
    """The same questions asked of a text-only LLaMA (the recipe's `base-llm`) with the scene written out where
    the image goes (`text_prompt_ids`), greedy, batched: what the language model can do before it sees an image."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(llm_dir))
    model = LlamaForCausalLM.from_pretrained(str(llm_dir), dtype=torch.float32).eval()
    pad = tok.unk_token_id or 0

    def answer(batch: list[EvalItem]) -> list[str]:
        ids, mask = _left_padded([text_prompt_ids(it, tok) for it in batch], pad)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=64, do_sample=False,
                                 eos_token_id=tok.eos_token_id, pad_token_id=pad)
        return _answers(out[:, ids.shape[1]:], tok)

    return _ask_in_batches(eval_set(n, seed, phrasing=phrasing), batch_size, answer, progress)


def _ask_in_batches(items: list[EvalItem], batch_size: int, answer: Callable[[list[EvalItem]], list[str]],
                    progress: Callable[[int, int], None] | None) -> EvalResult:
    """Every item through `answer` (a batch of items → their answers, in order), timed, reporting progress."""
    result = EvalResult()
    t0 = time.time()
    for b in range(0, len(items), batch_size):
        batch = items[b: b + batch_size]
        for it, text in zip(batch, answer(batch), strict=True):
            result.add(it, text)
        if progress:
            progress(min(b + batch_size, len(items)), len(items))
    result.seconds = time.time() - t0
    return result


def _left_padded(seqs: list[list[int]], pad: int) -> tuple[Any, Any]:
    """(input_ids, attention_mask), int64 (B, longest): left padding, so every row's answer starts at one column."""
    import torch

    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s)
        mask[i, width - len(s):] = 1
    return ids, mask


def _answers(generated: Any, tok: Any) -> list[str]:
    """Each generated row up to its first EOS, decoded."""
    out = []
    for row in generated.tolist():
        if tok.eos_token_id in row:
            row = row[: row.index(tok.eos_token_id)]
        out.append(tok.decode(row, skip_special_tokens=True).strip())
    return out
