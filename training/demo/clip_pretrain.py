"""Step 3 of the demo recipe: a small CLIP-style ViT trained contrastively, standing in for OpenAI's CLIP.

Contract: `pretrain_clip(pixels, captions, tokenizer_dir, out_dir, cfg)` trains a `transformers.CLIPModel`
(vision tower + a small text transformer over the recipe's SentencePiece tokenizer) with a symmetric
InfoNCE loss on image–caption pairs, then writes only the vision tower as an HF `CLIPVisionModel`
directory (`config.json` + `model.safetensors`) — what LLaVA's configs name as `vision_tower`.

`pixels` is float32 (N, 3, S, S), already preprocessed by `llava_local.preprocess` with the bundle's
config, so the tower sees exactly what the runtime will feed it. In a synthetic world many captions repeat
word for word; pairs with identical captions count as positives of each other (multi-positive InfoNCE),
so the loss does not push apart images that the text cannot tell apart.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .lm_pretrain import cosine_lr, shuffled_batches

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClipConfig:
    """Shape and schedule of the stand-in CLIP."""

    image_size: int = 64
    patch_size: int = 8  # (64/8)^2 = 64 patch tokens + CLS
    hidden_size: int = 192
    intermediate_size: int = 768
    num_layers: int = 4
    num_heads: int = 4
    text_hidden_size: int = 128
    text_layers: int = 2
    text_max_len: int = 64  # caption tokens, longer captions are cut (EOS kept)
    projection_dim: int = 128
    batch_size: int = 128
    steps: int = 400
    lr: float = 1e-3
    warmup: int = 40
    weight_decay: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError("image_size must be a multiple of patch_size")
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must divide into num_heads")


def _caption_ids(captions: Sequence[str], tok: Any, max_len: int) -> tuple[Any, Any]:
    """Token ids (N, max_len) with EOS last (CLIP's text pooling reads the EOS position) and the mask."""
    import torch

    ids = torch.zeros((len(captions), max_len), dtype=torch.long)
    mask = torch.zeros((len(captions), max_len), dtype=torch.long)
    for i, c in enumerate(captions):
        row = [tok.bos_token_id, *tok(c, add_special_tokens=False)["input_ids"]][: max_len - 1] + [tok.eos_token_id]
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask


def pretrain_clip(pixels: Any, captions: Sequence[str], tokenizer_dir: str | Path, out_dir: str | Path,
                  cfg: ClipConfig) -> dict[str, Any]:
    """Train the stand-in CLIP on (pixels, captions); save the vision tower; return a report."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel

    t0 = time.time()
    torch.manual_seed(cfg.seed)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    n = pixels.shape[0]
    assert pixels.shape[1:] == (3, cfg.image_size, cfg.image_size), pixels.shape
    ids, mask = _caption_ids(captions, tok, cfg.text_max_len)
    # caption identity → multi-positive targets (see module docstring)
    _, caption_class = torch.unique(ids, dim=0, return_inverse=True)

    vision = dict(hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                  num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                  image_size=cfg.image_size, patch_size=cfg.patch_size, hidden_act="gelu")
    text = dict(vocab_size=len(tok), hidden_size=cfg.text_hidden_size, intermediate_size=4 * cfg.text_hidden_size,
                num_hidden_layers=cfg.text_layers, num_attention_heads=4, max_position_embeddings=cfg.text_max_len,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.unk_token_id)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=cfg.projection_dim))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    gen = torch.Generator().manual_seed(cfg.seed)
    batches, losses, accs = shuffled_batches(n, cfg.batch_size, gen), [], []
    model.train()
    for step, idx in zip(range(cfg.steps), batches):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, cfg.steps, cfg.lr, cfg.warmup)
        out = model(input_ids=ids[idx], attention_mask=mask[idx], pixel_values=pixels[idx])
        logits = out.logits_per_image  # (B, B), already scaled by exp(logit_scale)
        same = (caption_class[idx][:, None] == caption_class[idx][None, :]).float()
        target = same / same.sum(dim=1, keepdim=True)
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)  # CLIP caps the temperature at 100
            accs.append(same[torch.arange(len(idx)), logits.argmax(dim=1)].mean().item())
        losses.append(loss.item())
        if step % 50 == 0 or step == cfg.steps - 1:
            log.info("clip step %d/%d loss %.4f i→t acc %.3f", step, cfg.steps, loss.item(), accs[-1])

    tower = CLIPVisionModel(CLIPVisionConfig(**vision))
    tower.load_state_dict(model.vision_model.state_dict(), strict=True)
    out_path = Path(out_dir)
    out_path.mkdir(parents=True, exist_ok=True)
    tower.save_pretrained(str(out_path))
    tail = slice(-20, None)
    return {"pairs": n, "distinct_captions": int(caption_class.max()) + 1, "steps": cfg.steps,
            "final_loss": round(sum(losses[tail]) / len(losses[tail]), 4),
            "final_i2t_acc": round(sum(accs[tail]) / len(accs[tail]), 3),
            "seconds": round(time.time() - t0, 1), "config": asdict(cfg)}
