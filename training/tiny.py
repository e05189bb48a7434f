"""Tiny random checkpoints on disk, deterministic by seed: the inputs of tests and of the tiny training preset.

Contract (every builder returns the directory it wrote, and writes nothing outside `out_dir`/`clip_dir`):
- `make_tiny_llava_hf(out_dir, tokenizer="spm"|"bpe", projector="mlp2x_gelu"|"linear", ...)`: the llava-hf
  layout written by transformers' `save_pretrained` (`language_model.model.*`, `vision_tower.*`,
  `multi_modal_projector.*`) plus a tokenizer with `<image>` and a `preprocessor_config.json`. With
  `layout_c=True` it also writes `llava_local.json` (the training output format, "layout c"); a `linear`
  projector is only allowed there, because transformers' Llava has no such projector.
- `make_tiny_llava_original(out_dir, clip_dir, ...)`: the original LLaVA layout (`LlavaLlamaForCausalLM` keys
  `model.*`, `lm_head.weight`, `model.mm_projector.0/2.*` or `model.mm_projector.*` for linear, sharded
  `pytorch_model-*.bin` + index), config.json with `mm_vision_tower` pointing at a separate tiny CLIP dir
  written by `CLIPVisionModel.save_pretrained`.
- `make_tiny_base_models(out_dir)`: `TinyBaseModels(llm_dir, clip_dir)`: a tiny HF LLaMA (+ SentencePiece
  tokenizer without `<image>`) and a tiny CLIP vision tower, what stage-1 training starts from.

Sizes (`TinySizes`): the LLM uses hidden 256 / ffn 512 so that llama.cpp's K-quants (256-element blocks) apply
to every matrix; the vision tower is 64 wide with 56 px images and 14 px patches (16 patch tokens).
The LLM is random and then briefly trained (`warmup_steps` AdamW steps on `tiny_corpus`, a few seconds on
CPU): a purely random model has near-tied top-1 logits everywhere, so an 8-bit GGUF flips greedy tokens by
chance; a model that has learnt a little has clear margins, as real models do, and greedy parity tests then
check the conversion rather than luck. Everything stays deterministic by seed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from .tokenizer import IMAGE_TOKEN, tiny_corpus, train_byte_bpe, train_sentencepiece

TokenizerKind = Literal["spm", "bpe"]
ProjectorKind = Literal["mlp2x_gelu", "linear"]


@dataclass(frozen=True)
class TinySizes:
    vocab_pieces: int = 512  # tokenizer pieces; `<image>` gets this id
    vocab_rows: int = 576  # embedding rows of llava-hf style models (pieces + <image>, padded to 64)
    hidden: int = 256
    ffn: int = 512
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    context: int = 1024
    rope_theta: float = 10000.0
    vision_hidden: int = 64
    vision_ffn: int = 128
    vision_layers: int = 3
    vision_heads: int = 4
    image_size: int = 56
    patch: int = 14
    init_std: float = 0.08  # LLM weights; transformers' default 0.02 gives near-uniform logits
    warmup_steps: int = 40  # AdamW steps of next-token training on the tiny corpus (0: purely random)


TINY = TinySizes()


@dataclass(frozen=True)
class TinyBaseModels:
    llm_dir: Path
    clip_dir: Path


def _tokenizer(kind: TokenizerKind, out: Path, sizes: TinySizes, *, image_token: bool, seed: int) -> Path:
    texts = tiny_corpus(400, seed)
    if kind == "spm":
        return train_sentencepiece(texts, out, sizes.vocab_pieces, add_image_token=image_token,
                                   model_max_length=sizes.context)
    if kind == "bpe":
        return train_byte_bpe(texts, out, sizes.vocab_pieces, add_image_token=image_token,
                              model_max_length=sizes.context)
    raise ValueError(f"tokenizer must be 'spm' or 'bpe', not {kind!r}")


def _llama_config(sizes: TinySizes, vocab_rows: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_rows, hidden_size=sizes.hidden, intermediate_size=sizes.ffn,
        num_hidden_layers=sizes.layers, num_attention_heads=sizes.heads, num_key_value_heads=sizes.kv_heads,
        max_position_embeddings=sizes.context, rms_norm_eps=1e-5, initializer_range=sizes.init_std,
        rope_parameters={"rope_type": "default", "rope_theta": sizes.rope_theta}, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, pad_token_id=None,
    )


def _clip_config(sizes: TinySizes):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=sizes.vision_hidden, intermediate_size=sizes.vision_ffn, num_hidden_layers=sizes.vision_layers,
        num_attention_heads=sizes.vision_heads, image_size=sizes.image_size, patch_size=sizes.patch,
        projection_dim=sizes.vision_hidden, hidden_act="quick_gelu", layer_norm_eps=1e-5,
    )


def _preprocessor_config(size: int, do_pad: bool) -> dict:
    from llava_local.preprocess import CLIP_MEAN, CLIP_STD

    return {
        "image_processor_type": "LlavaImageProcessor", "do_pad": do_pad, "do_resize": True,
        "size": {"shortest_edge": size}, "do_center_crop": True, "crop_size": {"height": size, "width": size},
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD), "resample": 3, "do_convert_rgb": True,
    }


def _warm_up(model, tok_dir: Path, steps: int, seed: int, *, seq: int = 32, batch: int = 8, lr: float = 3e-3) -> None:
    """A few steps of next-token training on the tiny corpus so that the model's top-1 margins are clear."""
    import torch
    from transformers import AutoTokenizer

    if steps <= 0:
        return
    tok = AutoTokenizer.from_pretrained(tok_dir)
    ids: list[int] = []
    for line in tiny_corpus(400, seed):
        ids += list(tok(line).input_ids) + [tok.eos_token_id]
    data = torch.tensor(ids)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    # One thread: these matmuls are tiny, and with several threads on a busy machine (CI, parallel test runs)
    # OpenMP spin-waiting made each step ~10x slower. It also keeps the result independent of the core count.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model.train()
        for _ in range(steps):
            starts = torch.randint(0, len(data) - seq - 1, (batch,), generator=g)
            x = torch.stack([data[s:s + seq] for s in starts])  # (batch, seq) token ids
            loss = model(input_ids=x, labels=x).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    finally:
        torch.set_num_threads(threads)
        model.eval()


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def make_tiny_llava_hf(
    out_dir: str | Path,
    *,
    tokenizer: TokenizerKind = "spm",
    projector: ProjectorKind = "mlp2x_gelu",
    image_size: int | None = None,
    seed: int = 0,
    sizes: TinySizes = TINY,
    vision_feature_layer: int = -2,
    nested_vision_keys: bool = False,
    preprocessor_config: bool = True,
    do_pad: bool = True,
    layout_c: bool = False,
    template: str = "vicuna_v1",
) -> Path:
    """Write a tiny random llava-hf checkpoint (or, with `layout_c`, our training output) to `out_dir`.

    `nested_vision_keys` rewrites `vision_tower.*` as `vision_tower.vision_model.*` (the hub's spelling).
    """
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    if projector == "linear" and not layout_c:
        raise ValueError("a linear projector exists only in layout c (transformers' Llava has no linear projector)")
    if image_size is not None:
        sizes = replace(sizes, image_size=image_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok_dir = _tokenizer(tokenizer, out, sizes, image_token=True, seed=seed)
    from transformers import AutoTokenizer

    image_id = AutoTokenizer.from_pretrained(tok_dir).convert_tokens_to_ids(IMAGE_TOKEN)
    n_patches = (sizes.image_size // sizes.patch) ** 2
    config = LlavaConfig(
        vision_config=_clip_config(sizes), text_config=_llama_config(sizes, sizes.vocab_rows),
        image_token_id=image_id, vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy="default", projector_hidden_act="gelu", image_seq_length=n_patches,
        multimodal_projector_bias=True, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    _warm_up(model, tok_dir, sizes.warmup_steps, seed)
    model.save_pretrained(out)
    if nested_vision_keys or projector == "linear":
        _rewrite_hf_weights(out, nested_vision_keys=nested_vision_keys, linear=projector == "linear", seed=seed,
                            shape=(sizes.hidden, sizes.vision_hidden))
    if preprocessor_config:
        _write_json(out / "preprocessor_config.json", _preprocessor_config(sizes.image_size, do_pad))
    if layout_c:
        from llava_local.preprocess import PreprocessConfig

        _write_json(out / "llava_local.json", {
            "format": "llava-local-train", "version": 1, "projector_type": projector,
            "preprocess": PreprocessConfig(mode="pad" if do_pad else "crop", size=sizes.image_size).to_dict(),
            "template": template, "context_length": sizes.context,
            "provenance": {"recipe": "training.tiny", "seed": seed},
        })
    return out


def _rewrite_hf_weights(out: Path, *, nested_vision_keys: bool, linear: bool, seed: int,
                        shape: tuple[int, int]) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    path = out / "model.safetensors"
    state = load_file(path)
    new: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if linear and k.startswith("multi_modal_projector."):
            continue
        if nested_vision_keys and k.startswith("vision_tower.") and not k.startswith("vision_tower.vision_model."):
            k = "vision_tower.vision_model." + k[len("vision_tower."):]
        new[k] = v.contiguous()
    if linear:
        g = torch.Generator().manual_seed(seed + 1)
        new["multi_modal_projector.linear.weight"] = torch.randn(shape, generator=g) * 0.05
        new["multi_modal_projector.linear.bias"] = torch.randn(shape[0], generator=g) * 0.05
    save_file(new, str(path), metadata={"format": "pt"})


def make_tiny_clip(clip_dir: str | Path, *, seed: int = 0, sizes: TinySizes = TINY) -> Path:
    """A tiny CLIP vision tower saved with `CLIPVisionModel.save_pretrained` (+ a CLIP preprocessor config)."""
    import torch
    from transformers import CLIPVisionModel

    clip = Path(clip_dir)
    clip.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed + 100)
    CLIPVisionModel(_clip_config(sizes)).save_pretrained(clip)
    cfg = _preprocessor_config(sizes.image_size, do_pad=False)
    cfg["image_processor_type"] = "CLIPImageProcessor"
    del cfg["do_pad"]
    _write_json(clip / "preprocessor_config.json", cfg)
    return clip


def make_tiny_llava_original(
    out_dir: str | Path,
    clip_dir: str | Path,
    *,
    projector: ProjectorKind = "mlp2x_gelu",
    image_aspect_ratio: str = "pad",
    select_layer: int = -2,
    seed: int = 0,
    sizes: TinySizes = TINY,
    write_clip: bool = True,
) -> Path:
    """Write a tiny original-LLaVA checkpoint to `out_dir` and its CLIP tower to `clip_dir`.

    Vocabulary rows equal the SentencePiece size (no `<image>` entry: original LLaVA splices features at the
    placeholder id -200). Weights go in two `pytorch_model-*.bin` shards with an index, as on the hub.
    """
    import torch
    from transformers import LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clip = Path(clip_dir)
    if write_clip:
        make_tiny_clip(clip, seed=seed, sizes=sizes)
    _tokenizer("spm", out, sizes, image_token=False, seed=seed)
    cfg = _llama_config(sizes, sizes.vocab_pieces)
    torch.manual_seed(seed)
    llm = LlamaForCausalLM(cfg)
    _warm_up(llm, out, sizes.warmup_steps, seed)
    state = {k: v.detach().clone().contiguous() for k, v in llm.state_dict().items()}
    g = torch.Generator().manual_seed(seed + 1)
    vh, h = sizes.vision_hidden, sizes.hidden
    if projector == "mlp2x_gelu":
        state["model.mm_projector.0.weight"] = torch.randn(h, vh, generator=g) * 0.05
        state["model.mm_projector.0.bias"] = torch.randn(h, generator=g) * 0.05
        state["model.mm_projector.2.weight"] = torch.randn(h, h, generator=g) * 0.05
        state["model.mm_projector.2.bias"] = torch.randn(h, generator=g) * 0.05
    elif projector == "linear":
        state["model.mm_projector.weight"] = torch.randn(h, vh, generator=g) * 0.05
        state["model.mm_projector.bias"] = torch.randn(h, generator=g) * 0.05
    else:
        raise ValueError(f"projector must be 'mlp2x_gelu' or 'linear', not {projector!r}")
    # Two shards + index, like liuhaotian/llava-v1.5-7b.
    keys = sorted(state)
    shards = {"pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2],
              "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2:]}
    weight_map = {}
    for fname, names in shards.items():
        torch.save({k: state[k] for k in names}, out / fname)
        weight_map.update({k: fname for k in names})
    total = sum(t.numel() * t.element_size() for t in state.values())
    _write_json(out / "pytorch_model.bin.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})
    config = cfg.to_dict()
    config.update({
        "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava",
        "mm_vision_tower": str(clip.resolve()), "mm_hidden_size": vh, "mm_projector_type": projector,
        "mm_vision_select_layer": select_layer, "mm_vision_select_feature": "patch",
        "mm_use_im_start_end": False, "mm_use_im_patch_token": False, "image_aspect_ratio": image_aspect_ratio,
        "mm_patch_merge_type": "flat", "tokenizer_model_max_length": sizes.context,
        "tokenizer_padding_side": "right", "torch_dtype": "float32", "use_cache": True,
    })
    _write_json(out / "config.json", config)
    return out


def make_tiny_base_models(out_dir: str | Path, *, seed: int = 0, sizes: TinySizes = TINY) -> TinyBaseModels:
    """`out_dir/llm` (LlamaForCausalLM + SentencePiece tokenizer) and `out_dir/clip` (CLIPVisionModel)."""
    import torch
    from transformers import LlamaForCausalLM

    out = Path(out_dir)
    llm_dir, clip_dir = out / "llm", out / "clip"
    llm_dir.mkdir(parents=True, exist_ok=True)
    _tokenizer("spm", llm_dir, sizes, image_token=False, seed=seed)
    torch.manual_seed(seed)
    LlamaForCausalLM(_llama_config(sizes, sizes.vocab_pieces)).save_pretrained(llm_dir)
    make_tiny_clip(clip_dir, seed=seed, sizes=sizes)
    return TinyBaseModels(llm_dir=llm_dir, clip_dir=clip_dir)
