"""training/demo/recipe.yaml → `RecipeConfig`: the demo model's recipe as one frozen, fully stated config.

Contract: `load_recipe(path)` returns a `RecipeConfig` or raises `UsageError` naming the first key that is missing,
unknown or inconsistent. The YAML states every value (the config classes it fills have no defaults of their own),
so the recipe is written down in one place. `STAGES` names the recipe's stages in the order they run.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from llava_local.errors import UsageError

from .clip_pretrain import ClipConfig
from .corpus import DataMix
from .gates import Gate
from .lm_pretrain import LMConfig

RECIPE_YAML = Path(__file__).with_name("recipe.yaml")
STAGES = ("data", "tokenizer", "lm", "clip", "stage1", "listing", "lookup", "relation", "stage2", "final", "polish",
          "convert", "eval")
CURRICULUM = ("listing", "lookup", "relation")  # optional stages between stage 1 and stage 2, in order
SECOND_PASS = ("final", "polish")  # optional stages after stage 2, in order
LLAVA_STAGES = ("stage1", *CURRICULUM, "stage2", *SECOND_PASS)  # the stages that train LLaVA, in STAGES order


@dataclass(frozen=True)
class RecipeConfig:
    """training/demo/recipe.yaml, parsed. No defaults: the YAML states every value (`load_recipe` refuses a missing
    one), so there is one place where the recipe is written down."""

    world_seed: int
    scenes: int
    image_size: int
    mix: DataMix
    vocab_size: int
    lm: LMConfig
    clip: ClipConfig
    stage1: str
    listing: str  # curriculum presets between stage 1 and stage 2; empty: that stage is left out
    lookup: str
    relation: str
    stage2: str
    final: str  # second pass after stage 2; empty: left out
    polish: str
    quant: str
    # held-out gates: a stage named here trains past its preset's steps until its probe reaches the target
    gates: dict[str, Gate]
    gate_seed: int  # the probes' scenes: a world of their own, neither the training world nor the eval's
    gate_n: int
    eval_seed: int
    eval_n: int
    # lm and the LLaVA stages: "bf16" autocast, "fp32", or "auto" (bf16 where the CPU multiplies bf16 natively)
    precision: str
    # `--scale`: the LLaVA stages' `optim.max_steps` are multiplied by it too (the presets hold the full counts)
    stage_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.precision not in ("auto", "bf16", "fp32"):
            raise UsageError("precision must be auto, bf16 or fp32")
        if self.clip.image_size != self.image_size:
            raise UsageError("clip.image_size must equal world.image_size")
        if self.eval_seed == self.world_seed:
            raise UsageError("eval.seed must differ from world.seed (the eval uses held-out scenes)")
        if self.gate_seed in (self.world_seed, self.eval_seed):
            raise UsageError("gates.seed must differ from world.seed and eval.seed (the gates select on their own "
                             "scenes)")
        if bad := sorted(set(self.gates) - set(LLAVA_STAGES)):
            raise UsageError(f"gates: {bad[0]!r} is not a LLaVA stage; known: {', '.join(LLAVA_STAGES)}")


def _section(d: dict[str, Any], key: str) -> dict[str, Any]:
    value = d.get(key)
    if not isinstance(value, dict):
        raise UsageError(f"recipe: section {key!r} is missing")
    return value


def _check_keys(data: dict[str, Any], known: AbstractSet[str], where: str,
                optional: AbstractSet[str] = frozenset()) -> None:
    """A YAML section names every key of `known` (but `optional`) and nothing else."""
    if bad := sorted(set(data) - known):
        raise UsageError(f"{where}: unknown key {bad[0]!r}; known: {', '.join(sorted(known))}")
    if missing := sorted(known - set(data) - optional):
        raise UsageError(f"{where}: missing {', '.join(missing)} (the recipe states every value)")


def _dc(cls: type, data: dict[str, Any], where: str, set_elsewhere: tuple[str, ...] = ()) -> Any:
    """`cls` from a YAML section that names every field (but `set_elsewhere`) and nothing else."""
    _check_keys(data, {f.name for f in fields(cls)} - set(set_elsewhere), where)
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def load_recipe(path: str | Path = RECIPE_YAML, scale: float = 1.0) -> RecipeConfig:
    """Read the recipe YAML, which states every value; `scale` < 1 shrinks scenes and step counts for a quick trial
    run."""
    import yaml

    d = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if "precision" in d.get("lm", {}):  # one owner: the recipe applies its precision to every stage
        raise UsageError("lm: precision is set for the whole recipe (top-level `precision`), not per stage")
    lm = _dc(LMConfig, _section(d, "lm"), "lm", set_elsewhere=("precision",))
    clip = _dc(ClipConfig, _section(d, "clip"), "clip")
    world = _section(d, "world")
    stages = {"stage1": "", "stage2": "", **{s: None for s in (*CURRICULUM, *SECOND_PASS)}} | _section(d, "stages")
    gates = _section(d, "gates")
    top = {"world": {"seed", "scenes", "image_size"}, "tokenizer": {"vocab_size"}, "convert": {"quant"},
           "eval": {"seed", "n"}, "stages": set(stages), "gates": {"seed", "n", *LLAVA_STAGES}}
    for name, keys in top.items():
        optional = {*CURRICULUM, *SECOND_PASS} if name == "stages" else set(LLAVA_STAGES) if name == "gates" else set()
        _check_keys(_section(d, name), keys, name, optional)
    if "precision" not in d:
        raise UsageError("recipe: missing precision (the recipe states every value)")
    scenes = int(world["scenes"])
    if scale != 1.0:
        lm = replace(lm, steps=max(20, int(lm.steps * scale)), warmup=max(5, int(lm.warmup * scale)))
        clip = replace(clip, steps=max(20, int(clip.steps * scale)), warmup=max(5, int(clip.warmup * scale)))
        scenes = max(256, int(scenes * scale))
    return RecipeConfig(
        world_seed=int(world["seed"]), scenes=scenes, image_size=int(world["image_size"]),
        mix=_dc(DataMix, _section(d, "mix"), "mix"), vocab_size=int(d["tokenizer"]["vocab_size"]),
        lm=lm, clip=clip, stage1=stages["stage1"], stage2=stages["stage2"],
        **{s: stages[s] or "" for s in (*CURRICULUM, *SECOND_PASS)},  # optional stages: empty leaves one out
        quant=d["convert"]["quant"],
        gates={s: _dc(Gate, g, f"gates.{s}") for s, g in gates.items() if s in LLAVA_STAGES},
        gate_seed=int(gates["seed"]), gate_n=int(gates["n"]),
        eval_seed=int(d["eval"]["seed"]), eval_n=int(d["eval"]["n"]),
        precision=str(d["precision"]), stage_scale=scale,
    )


def scaled_steps(steps: int, scale: float) -> int:
    """A LLaVA stage's `optim.max_steps` in a `--scale` trial run; 0 (a whole epoch) stays 0, as the scenes shrink."""
    return steps if steps == 0 else max(10, int(steps * scale))


def native_bf16() -> bool:
    """Does this CPU multiply bf16 in hardware (AVX512-BF16 or AMX)? Elsewhere bf16 is emulated and slower than
    fp32. Only Linux says so cheaply (/proc/cpuinfo); other systems get fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags
