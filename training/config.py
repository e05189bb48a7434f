"""Training configuration: frozen dataclasses loaded from YAML, with dotted `key=value` overrides.

Contract: `load_config(path, overrides)` reads a preset (`training/configs/*.yaml` or any file), applies
overrides such as `optim.lr=1e-4` or `data.json=/data/llava.json`, and returns a validated `TrainConfig`.
Every mistake (unknown key, wrong type, impossible combination) raises `UsageError` with a one-line fix.
Paths are kept as written; they are checked when the run starts (`check_paths`), so presets that name
paths on another machine still validate here.

Sections:
- `model`: base weights (local HF dirs), projector type, vision feature layer / CLS handling, template.
- `data`: LLaVA JSON, image root, preprocessing, context length, batching by length.
- `optim`: AdamW, cosine schedule with warmup, batch sizes (global = micro × accumulation × world size).
- `lora`: stage-2 LoRA through peft, merged into the weights when the run ends.
- `train`: output dir, seed, precision, activation checkpointing, logging and checkpoint cadence.
- `distributed`: FSDP2 knobs (used when launched by torchrun with WORLD_SIZE > 1).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from llava_local.errors import UsageError
from llava_local.templates import TEMPLATES

PROJECTOR_TYPES = ("linear", "mlp2x_gelu")
LR_SCHEDULES = ("cosine", "constant", "wsd")
PRECISIONS = ("auto", "bf16", "fp32")
PRESET_DIR = Path(__file__).parent / "configs"


@dataclass(frozen=True)
class ModelConfig:
    vision_tower: str = ""
    """Local HF dir of a CLIP vision model (CLIPVisionModel or a full CLIPModel); frozen in both stages."""
    language_model: str = ""
    """Local HF dir of a LLaMA-family causal LM (LlamaForCausalLM)."""
    tokenizer: str = ""
    """Tokenizer dir; empty means `language_model`. `<image>` is added when missing."""
    init_from: str = ""
    """Stage 2: a stage-1 output dir (layout c); its projector (and any other matching weights) are loaded."""
    projector_type: str = "mlp2x_gelu"
    """`linear` (LLaVA v1) or `mlp2x_gelu` (LLaVA-1.5: Linear, GELU, Linear)."""
    vision_feature_layer: int = -2
    """Which hidden state of the vision tower feeds the projector (LLaVA: the second to last)."""
    vision_feature_select_strategy: str = "default"
    """`default` drops the CLS token (LLaVA's "patch"); `full` keeps it."""
    template: str = "vicuna_v1"
    """Chat template name in `llava_local.templates` (`plain` for stage 1)."""


@dataclass(frozen=True)
class DataConfig:
    json: str = ""
    """LLaVA-format JSON: a list of {id, image?, conversations: [{from: human|gpt, value}]}."""
    image_root: str = ""
    """Directory image paths in the JSON are relative to; empty means the JSON's directory."""
    preprocess_mode: str = "pad"
    """`pad` (LLaVA-1.5: pad to square with the mean colour) or `crop` (v1: resize + centre crop)."""
    image_size: int = 0
    """Pixels per side; 0 means the vision tower's `image_size`."""
    resample: str = "bicubic"
    context_length: int = 2048
    """Tokens per sample after image expansion; longer samples are truncated (and counted)."""
    group_by_length: bool = True
    """Batch samples of similar length together (less padding), as LLaVA's `group_by_modality_length`."""
    length_group_steps: int = 1
    """With `group_by_length`: sort the samples of this many consecutive optimizer steps together (1: only within
    a global batch, as LLaVA). One process with one micro-batch per step needs > 1 to pad less."""
    num_workers: int = 0
    """DataLoader worker processes (0: load in the training process)."""


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 2e-5
    projector_lr: float = 0.0
    """Learning rate of the projector; 0 means `lr` (LLaVA LoRA recipe uses 2e-5 with LoRA lr 2e-4)."""
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_ratio: float = 0.03
    warmup_steps: int = 0
    """Linear warmup length in optimizer steps; when > 0 it replaces `warmup_ratio` (a run whose length is a cap,
    not a plan, keeps its warmup)."""
    epochs: int = 1
    max_steps: int = 0
    """Length of the schedule in optimizer steps; 0 means `epochs` worth of steps."""
    global_batch_size: int = 128
    """Samples per optimizer step over all processes: micro_batch_size × accumulation × world size."""
    micro_batch_size: int = 16
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0 disables clipping."""
    schedule: str = "cosine"
    """After the linear warmup: `cosine` decay to 0 at the last step (LLaVA's), `constant` at `lr`, or `wsd`
    (warmup-stable-decay): constant at `lr`, then linear to 0 over the last `decay_ratio` of the steps."""
    decay_ratio: float = 0.2
    """`wsd` only: the share of all steps spent decaying linearly to 0 at the end."""

    def warmup_for(self, total_steps: int) -> int:
        """Warmup length in steps for a schedule of `total_steps`: `warmup_steps`, else `warmup_ratio` of them."""
        return self.warmup_steps or math.ceil(self.warmup_ratio * total_steps)


@dataclass(frozen=True)
class LoraConfig:
    enabled: bool = False
    r: int = 128
    alpha: int = 256
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    merge: bool = True
    """Merge the adapters into the LLM weights in the final output (what `llava-local convert` needs)."""


@dataclass(frozen=True)
class RunConfig:
    out_dir: str = "runs/llava"
    seed: int = 42
    precision: str = "auto"
    """`auto`: bf16 autocast/mixed precision on GPU, fp32 on CPU; `bf16` or `fp32` to force."""
    activation_checkpointing: bool = True
    log_every: int = 1
    checkpoint_every: int = 500
    """Save a resumable checkpoint every N optimizer steps and at the last step; 0: none (SIGTERM still saves)."""
    keep_checkpoints: int = 2
    stop_after_steps: int = 0
    """Stop (after checkpointing) once this many steps are done, without changing the schedule; 0: never."""
    probe_every: int = 0
    """With a probe passed to `run_training` (e.g. the demo recipe's held-out gates): export the model every N
    steps from `probe_after` on and stop early when the probe says the skill is learned; 0: never probe."""
    probe_after: int = 0
    """The first probe comes at this step (at `probe_every` when 0); `optim.max_steps` is then the cap."""
    tensorboard: bool = True
    """Also log to TensorBoard when the `tensorboard` package is installed."""


@dataclass(frozen=True)
class DistributedConfig:
    reshard_after_forward: bool = True
    """FSDP2: free gathered parameters after forward (ZeRO-3); False keeps them (ZeRO-2-like, more memory)."""
    backend: str = "auto"
    """`auto`: nccl with CUDA, gloo on CPU."""


@dataclass(frozen=True)
class TrainConfig:
    stage: int = 1
    """1: align the projector (only the projector trains). 2: instruction tuning (projector + LLM or LoRA)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: RunConfig = field(default_factory=RunConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def __post_init__(self) -> None:
        _validate(self)

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    @property
    def tokenizer_dir(self) -> str:
        return self.model.tokenizer or self.model.language_model


def _validate(c: TrainConfig) -> None:
    m, d, o, lo, r = c.model, c.data, c.optim, c.lora, c.train
    checks = [
        (c.stage in (1, 2), f"stage must be 1 or 2, not {c.stage}"),
        (m.projector_type in PROJECTOR_TYPES,
         f"model.projector_type must be one of {', '.join(PROJECTOR_TYPES)}, not {m.projector_type!r}"),
        (m.vision_feature_select_strategy in ("default", "full"),
         "model.vision_feature_select_strategy must be 'default' (drop CLS) or 'full'"),
        (m.template in TEMPLATES, f"model.template {m.template!r} is unknown; known: {', '.join(sorted(TEMPLATES))}"),
        (d.preprocess_mode in ("pad", "crop"), "data.preprocess_mode must be 'pad' or 'crop'"),
        (d.image_size >= 0, "data.image_size must be >= 0 (0: the vision tower's size)"),
        (d.context_length > 0, "data.context_length must be > 0"),
        (d.num_workers >= 0, "data.num_workers must be >= 0"),
        (d.length_group_steps >= 1, "data.length_group_steps must be >= 1"),
        (o.lr > 0 and o.projector_lr >= 0, "optim.lr must be > 0 and optim.projector_lr >= 0"),
        (0 <= o.warmup_ratio < 1 and o.warmup_steps >= 0,
         "optim.warmup_ratio must be in [0, 1) and optim.warmup_steps >= 0"),
        (o.epochs > 0 and o.max_steps >= 0, "optim.epochs must be > 0 and optim.max_steps >= 0"),
        (o.micro_batch_size > 0 and o.global_batch_size > 0, "batch sizes must be > 0"),
        (o.global_batch_size % o.micro_batch_size == 0,
         f"optim.global_batch_size ({o.global_batch_size}) must be a multiple of optim.micro_batch_size "
         f"({o.micro_batch_size})"),
        (o.grad_clip >= 0, "optim.grad_clip must be >= 0"),
        (0 < o.decay_ratio <= 1, "optim.decay_ratio must be in (0, 1]"),
        (o.schedule in LR_SCHEDULES, f"optim.schedule must be one of {', '.join(LR_SCHEDULES)}, not {o.schedule!r}"),
        (not (lo.enabled and c.stage == 1), "LoRA is for stage 2; stage 1 trains only the projector"),
        (lo.r > 0 and lo.alpha > 0 and 0 <= lo.dropout < 1, "lora.r and lora.alpha must be > 0, lora.dropout in [0,1)"),
        (r.precision in PRECISIONS, f"train.precision must be one of {', '.join(PRECISIONS)}"),
        (r.log_every > 0, "train.log_every must be > 0"),
        (r.checkpoint_every >= 0 and r.keep_checkpoints > 0 and r.stop_after_steps >= 0,
         "train.checkpoint_every and train.stop_after_steps must be >= 0, train.keep_checkpoints > 0"),
        (r.probe_every >= 0 and r.probe_after >= 0, "train.probe_every and train.probe_after must be >= 0"),
        (c.distributed.backend in ("auto", "nccl", "gloo"), "distributed.backend must be auto, nccl or gloo"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)


def _to_plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_plain(v) for v in x]
    return x


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the field's annotated type; raise UsageError naming the key."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _coerce(value, args[0], key)
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise UsageError(f"{key} must be a list, got {value!r}")
        args = typing.get_args(tp)
        item = args[0]
        return tuple(_coerce(v, item, key) for v in value)
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
                return value.lower() in ("true", "yes", "1", "on")
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if tp is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return "" if value is None else str(value)
    except (TypeError, ValueError):
        raise UsageError(f"{key} must be {getattr(tp, '__name__', tp)}, got {value!r}") from None
    raise UsageError(f"{key}: unsupported type {tp}")


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        where = f" in section {prefix.rstrip('.')!r}" if prefix else ""
        raise UsageError(f"unknown config key {prefix + unknown[0]!r}{where}; known keys: {', '.join(sorted(known))}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        key = prefix + name
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise UsageError(f"{key} must be a mapping of its keys, got {value!r}")
            kwargs[name] = _build(tp, value, key + ".")
        else:
            kwargs[name] = _coerce(value, tp, key)
    return cls(**kwargs)


def _parse_scalar(text: str) -> Any:
    """A `key=value` value parsed as YAML (numbers, booleans, lists), so `lr=2e-5` is a float."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=value` overrides to a nested dict (copied)."""
    import copy

    out = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise UsageError(f"override {item!r} must look like key=value, e.g. optim.lr=1e-4")
        key, _, raw = item.partition("=")
        parts = key.strip().split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise UsageError(f"override {key!r}: {p!r} is not a section")
        node[parts[-1]] = _parse_scalar(raw)
    return out


def resolve_preset(name_or_path: str) -> Path:
    """A YAML path, or the name of a preset in training/configs (with or without .yaml)."""
    p = Path(name_or_path).expanduser()
    if p.is_file():
        return p
    for candidate in (PRESET_DIR / name_or_path, PRESET_DIR / f"{name_or_path}.yaml"):
        if candidate.is_file():
            return candidate
    presets = ", ".join(sorted(q.stem for q in PRESET_DIR.glob("*.yaml")))
    raise UsageError(f"config {name_or_path!r} not found; give a YAML path or a preset: {presets}")


def load_config(name_or_path: str, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config (or preset name), apply `key=value` overrides, validate."""
    import yaml

    path = resolve_preset(name_or_path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise UsageError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path} must be a mapping of sections (model, data, optim, ...)")
    return config_from_dict(apply_overrides(data, overrides or []))


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    return _build(TrainConfig, data, "")


def check_paths(c: TrainConfig) -> None:
    """Fail early, with the key to fix, when a path the run needs does not exist."""
    needed = [("model.vision_tower", c.model.vision_tower), ("model.language_model", c.model.language_model),
              ("data.json", c.data.json)]
    if c.model.tokenizer:
        needed.append(("model.tokenizer", c.model.tokenizer))
    if c.model.init_from:
        needed.append(("model.init_from", c.model.init_from))
    if c.data.image_root:
        needed.append(("data.image_root", c.data.image_root))
    for key, value in needed:
        if not value:
            raise UsageError(f"{key} is not set; add it to the config or pass {key}=PATH")
        if not Path(value).expanduser().exists():
            raise UsageError(f"{key}: {value} does not exist; fix the path or pass {key}=PATH")
