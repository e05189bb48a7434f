"""Diagnostic: can the LLaMA learn to find the object a question names? One question type, perfect vision, minutes.

`python -m training.demo.probes.lookup_probe --form chat --init base --lr 5e-4` (after the recipe's lm stage).

Contract:
- Each example is one scene of the training world (`make_scene(world_seed, i)`, i < `scenes`), its 9 perfect-tower
  cell features (`perfect_tower.cell_features`) in the image slots, and text in one of four forms (`FORMS`): one
  teacher position question in the first three, every object's region in the last:
    - "ref":      the image, then only the object's name (" red circle") → its cell, as one of nine output ids;
    - "question": the image, then " Where is the red circle? ASSISTANT:" → " top left</s>";
    - "chat":     the eval's own prompt in `vicuna_v1` (system prompt, short-answer instruction) → " top left</s>";
    - "list":     the image, then every nameable object as " red circle: top left." in random order, all trained
                  (each region right after its name; random order, so reading the cells in turn cannot do it).
- With `tower` (an HF `CLIPVisionModel` directory, e.g. the recipe's `base-clip`), the image slots get that tower's
  real tokens instead: the scene rendered and preprocessed as the recipe does (`pad`), the last layer, class token
  dropped (the stage presets' `vision_feature_layer: -1`, `default`); the tower stays frozen. `TowerFeatures`.
- The model is a fresh `mlp2x_gelu` projector plus either the recipe's base LLaMA (`init="base"`) or the same
  architecture at random init (`init="scratch"`), trained with AdamW at a constant learning rate on answer tokens
  only (clip 1.0, no weight decay: the stage-2 preset's optimiser without its schedule; `projector_lr` gives the
  projector its own rate, as `optim.projector_lr` does); optionally in `warm_form` for the first `warm_steps` steps
  (a curriculum) and in `warm_share` of every batch after them (a mix).
- `probe()` returns the held-out accuracy curve: every `every` steps, the share of `eval_n` questions (world
  `eval_seed`) whose answer tokens are all argmax-right given the prompt (= greedy decoding of the answer), over all
  questions and over those whose object is named by one word (its shape).
- `BAG_LEVEL` is what a model scores that knows which cells are occupied but not which object was named; a curve
  that stays there has not learned the lookup (docs/demo-model-history.md, "What the sixth round measured").
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llava_local.preprocess import PreprocessConfig, preprocess
from training.datagen import teacher
from training.datagen.render import render
from training.datagen.world import CELL_OF_REGION, Scene, make_scene
from training.model import tokens_per_image, vision_tokens

from ..corpus import listing, prompt_of
from .perfect_tower import N_FEATURES, PerfectLlava, cell_features

FORMS = ("ref", "question", "chat", "list")
# 1 to 5 objects with equal odds, one of them picked at random: (1 + 1/2 + 1/3 + 1/4 + 1/5) / 5
BAG_LEVEL = sum(1 / k for k in range(1, 6)) / 5
_REF = re.compile(r"the (.+?)(?: in the image)?\?$")  # the object's name inside any of the teacher's phrasings


@dataclass(frozen=True)
class ProbeConfig:
    form: str = "chat"
    init: str = "base"  # base | scratch
    lr: float = 5e-4
    steps: int = 1500
    batch_size: int = 32
    every: int = 250
    scenes: int = 10000  # training scenes, as the recipe renders
    world_seed: int = 0
    eval_seed: int = 1000
    eval_n: int = 300
    seed: int = 0
    warm_form: str | None = None  # train in this form for the first `warm_steps` steps (a curriculum), then `form`
    warm_steps: int = 0
    warm_share: float = 0.0  # after the warm phase, this share of each batch stays in `warm_form` (a mix)
    tower: str | None = None  # a CLIPVisionModel directory: its tokens replace the perfect features
    projector_lr: float | None = None  # the projector's own learning rate (default: `lr`)

    def __post_init__(self) -> None:
        for form in (self.form, self.warm_form or self.form):
            if form not in FORMS:
                raise ValueError(f"form must be one of {FORMS}, not {form!r}")
        if self.init not in ("base", "scratch"):
            raise ValueError(f"init must be base or scratch, not {self.init!r}")

    def form_at(self, step: int, rng: random.Random) -> str:
        """The form of one example at `step` (1-based): the warm phase, then `form` with `warm_share` kept warm."""
        # draw only for a mix, so that runs without one see the same data as before `warm_share` existed
        warm = step <= self.warm_steps or (self.warm_share > 0 and rng.random() < self.warm_share)
        return self.warm_form if self.warm_form and warm else self.form


def _answer_ids(form: str, answer: str, tok: Any) -> list[int]:
    if form == "ref":  # nine output ids of their own: the last nine ordinary pieces, below <image>
        row, col = CELL_OF_REGION[answer]
        return [len(tok) - 10 + 3 * row + col]
    return tok.encode(f" {answer}", add_special_tokens=False) + [tok.eos_token_id]


Features = Callable[[Scene], torch.Tensor]  # a scene → its (9, F) image-slot features


class TowerFeatures:
    """A real vision tower's tokens for a scene, (9, hidden), as LLaVA's stages read them; cached per scene."""

    def __init__(self, tower_dir: str | Path) -> None:
        from transformers import CLIPVisionModel

        self.tower = CLIPVisionModel.from_pretrained(str(tower_dir), dtype=torch.float32).eval()
        self.pp = PreprocessConfig(mode="pad", size=self.tower.config.image_size)
        self.width = self.tower.config.hidden_size
        if (n := tokens_per_image(self.tower.config, "default")) != 9:
            raise ValueError(f"{tower_dir}: {n} patch tokens; the probe needs 3x3, one per grid cell")
        self._cache: dict[Scene, torch.Tensor] = {}  # by the scene itself: keys repeat across worlds

    @torch.no_grad()
    def __call__(self, scene: Scene) -> torch.Tensor:
        if scene not in self._cache:
            pixels = torch.from_numpy(preprocess(render(scene, self.tower.config.image_size), self.pp))
            # the stage presets' features: the last layer, CLS dropped: (9, hidden)
            self._cache[scene] = vision_tokens(self.tower, pixels, -1, "default")[0].clone()
        return self._cache[scene]


def encode_example(scene: Scene, qa: teacher.QA, form: str, tok: Any, image_id: int,
                   features: Features = cell_features) -> dict[str, Any]:
    """One position question → a `training.dataset` sample (9 image slots, labels on the answer only)."""
    from llava_local.templates import Turn, get_template
    from training.dataset import IGNORE_INDEX, encode

    if form == "chat":
        turns = [Turn("user", prompt_of(qa), 1), Turn("assistant", qa.answer)]
        ids, labels = encode(get_template("vicuna_v1").render(turns, add_generation_prompt=False), tok, image_id, 9)
        return _row(ids, labels, features(scene), " " not in _ref_of(qa))
    text = f" {_ref_of(qa)}" if form == "ref" else f" {qa.question} ASSISTANT:"
    prompt = _image_prefix(tok, image_id) + tok.encode(text, add_special_tokens=False)
    answer = _answer_ids(form, qa.answer, tok)
    return _row(prompt + answer, [IGNORE_INDEX] * len(prompt) + answer, features(scene), " " not in _ref_of(qa))


def encode_listing(scene: Scene, rng: random.Random, tok: Any, image_id: int,
                   features: Features = cell_features) -> dict[str, Any]:
    """The "list" form: every object a unique phrase names, in random order, each followed by its region."""
    from training.dataset import IGNORE_INDEX

    prompt = _image_prefix(tok, image_id)
    text = listing(scene, rng)
    answer = tok.encode(f" {text}" if text else "", add_special_tokens=False)  # each entry after a space
    answer.append(tok.eos_token_id)
    return _row(prompt + answer, [IGNORE_INDEX] * len(prompt) + answer, features(scene), False)


def _ref_of(qa: teacher.QA) -> str:
    return _REF.search(qa.question).group(1)


def _image_prefix(tok: Any, image_id: int) -> list[int]:
    """BOS and the image's 9 slots: how the forms without a chat template open."""
    return [tok.bos_token_id] + [image_id] * 9


def _row(ids: list[int], labels: list[int], feats: torch.Tensor, one_word: bool) -> dict[str, Any]:
    """A `training.dataset.collate` row, the scene's (9, F) features in the image slots."""
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "pixel_values": feats[None],
            "truncated": False, "one_word": one_word}


def sample(world_seed: int, index: int, rng: random.Random, form: str, tok: Any, image_id: int,
           features: Features = cell_features) -> dict[str, Any]:
    """A position question about scene `index`, or the next scene that has a uniquely named object."""
    if form == "list":
        return encode_listing(make_scene(world_seed, index), rng, tok, image_id, features)
    while (qa := teacher.sample_qa(scene := make_scene(world_seed, index), rng, "position")) is None:
        index += 1
    return encode_example(scene, qa, form, tok, image_id, features)


def _build_model(lm_dir: Path, init: str, tok: Any, in_features: int = N_FEATURES) -> PerfectLlava:
    from transformers import LlamaConfig, LlamaForCausalLM

    if init == "base":
        lm = LlamaForCausalLM.from_pretrained(str(lm_dir), dtype=torch.float32)
    else:  # "scratch" (ProbeConfig checks)
        lm = LlamaForCausalLM(LlamaConfig.from_pretrained(str(lm_dir)))
    return PerfectLlava(lm, tok.convert_tokens_to_ids("<image>"), in_features)


@torch.no_grad()
def accuracy(model: PerfectLlava, batches: list[dict[str, Any]]) -> tuple[float, float]:
    """(all, one-word names): share of rows whose every answer token is the argmax."""
    model.eval()
    right, one_word = [], []
    for b in batches:
        logits = model(b, with_labels=False).logits
        target = b["labels"][:, 1:]
        ok = ((logits[:, :-1].argmax(-1) == target) | (target < 0)).all(-1)
        right += ok.tolist()
        one_word += b["one_word"]
    model.train()
    words = [r for r, w in zip(right, one_word) if w]
    return sum(right) / len(right), sum(words) / max(1, len(words))


def probe(lm_dir: str | Path, cfg: ProbeConfig, log=print) -> list[tuple[int, float, float]]:
    """Train as the contract says; returns [(step, accuracy, accuracy on one-word names)]."""
    from transformers import AutoTokenizer

    from training.dataset import collate

    torch.manual_seed(cfg.seed)
    tok = AutoTokenizer.from_pretrained(str(lm_dir))
    features: Features = cell_features
    in_features = N_FEATURES
    if cfg.tower is not None:
        tower = TowerFeatures(cfg.tower)
        features, in_features = tower, tower.width
    model = _build_model(Path(lm_dir), cfg.init, tok, in_features)

    def batch(rows: list[dict[str, Any]]) -> dict[str, Any]:
        return collate(rows, tok.unk_token_id) | {"one_word": [r["one_word"] for r in rows]}

    erng = random.Random(f"probe-eval:{cfg.eval_seed}")
    held_out = [sample(cfg.eval_seed, i, erng, cfg.form, tok, model.image_token_id, features)
                for i in range(cfg.eval_n)]
    eval_batches = [batch(held_out[i: i + 50]) for i in range(0, len(held_out), 50)]
    rng = random.Random(cfg.seed)
    opt = torch.optim.AdamW([{"params": model.lm.parameters()},
                             {"params": model.projector.parameters(), "lr": cfg.projector_lr or cfg.lr}],
                            lr=cfg.lr, weight_decay=0.0)
    curve, t0 = [], time.time()
    for step in range(1, cfg.steps + 1):
        b = batch([sample(cfg.world_seed, rng.randrange(cfg.scenes), rng, cfg.form_at(step, rng), tok,
                          model.image_token_id, features) for _ in range(cfg.batch_size)])
        loss = model(b).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % cfg.every == 0 or step == cfg.steps:
            acc, one = accuracy(model, eval_batches)
            curve.append((step, acc, one))
            log(f"step {step} loss {loss.item():.3f} held-out {acc:.1%} one-word names {one:.1%} "
                f"(bag level {BAG_LEVEL:.1%}) {time.time() - t0:.0f}s")
    return curve


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.demo.probes.lookup_probe", description=__doc__.splitlines()[0])
    p.add_argument("--lm", default="build/demo/base-llm", help="the recipe's base LLaMA (its config, for scratch)")
    p.add_argument("--form", choices=FORMS, default=ProbeConfig.form)
    p.add_argument("--init", choices=("base", "scratch"), default=ProbeConfig.init)
    p.add_argument("--lr", type=float, default=ProbeConfig.lr)
    p.add_argument("--steps", type=int, default=ProbeConfig.steps)
    p.add_argument("--every", type=int, default=ProbeConfig.every)
    p.add_argument("--warm-form", choices=FORMS, help="train in this form first (held-out accuracy stays on --form)")
    p.add_argument("--warm-steps", type=int, default=0, help="how many steps the --warm-form phase lasts")
    p.add_argument("--warm-share", type=float, default=0.0, help="share of --warm-form examples after that phase")
    p.add_argument("--tower", help="a vision tower directory (e.g. build/demo/base-clip): its tokens, not perfect ones")
    p.add_argument("--projector-lr", type=float, help="the projector's learning rate (default: --lr)")
    args = p.parse_args(argv)
    if not (Path(args.lm) / "config.json").is_file():
        print(f"lookup_probe: error: {args.lm} is not a model directory (run the recipe's lm stage first)",
              file=sys.stderr)
        return 2
    if args.tower and not (Path(args.tower) / "config.json").is_file():
        print(f"lookup_probe: error: {args.tower} is not a model directory (run the recipe's clip stage first)",
              file=sys.stderr)
        return 2
    cfg = ProbeConfig(form=args.form, init=args.init, lr=args.lr, steps=args.steps, every=args.every,
                      warm_form=args.warm_form, warm_steps=args.warm_steps, warm_share=args.warm_share,
                      tower=args.tower, projector_lr=args.projector_lr)
    try:
        probe(args.lm, cfg, log=lambda s: print(s, flush=True))
    except ValueError as e:  # a tower that does not give one token per grid cell
        print(f"lookup_probe: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
