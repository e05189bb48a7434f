"""Step 3 of the demo recipe: a small CLIP-style ViT trained contrastively, standing in for OpenAI's CLIP.

Contract: `pretrain_clip(pixels, captions, tokenizer_dir, out_dir, cfg)` trains a `transformers.CLIPModel`
(vision tower + a small text transformer over the recipe's SentencePiece tokenizer) with a symmetric
InfoNCE loss on image–caption pairs, then writes only the vision tower as an HF `CLIPVisionModel`
directory (`config.json` + `model.safetensors`) — what LLaVA's configs name as `vision_tower`.

`pixels` is float32 (N, 3, S, S), already preprocessed by `llava_local.preprocess` with the bundle's
config, so the tower sees exactly what the runtime will feed it. In a synthetic world many captions repeat
word for word; pairs with identical captions count as positives of each other (multi-positive InfoNCE),
so the loss does not push apart images that the text cannot tell apart.

`regions` (optional) gives each image's objects as `(phrase, box[, hard_negatives])`: the patches under the box,
pooled, are contrasted with the phrases of the batch (RegionCLIP's region–phrase pairs) and, with
`hard_negative_weight`, with the region's own hard negatives (NegCLIP's idea: phrases that differ in one word).
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
    """Shape and schedule of the stand-in CLIP. No defaults: the recipe's values are in recipe.yaml (`clip:`)."""

    image_size: int
    patch_size: int  # (image_size / patch_size)^2 patch tokens + CLS
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    text_hidden_size: int
    text_layers: int
    text_max_len: int  # caption tokens, longer captions are cut (EOS kept)
    projection_dim: int
    batch_size: int
    steps: int
    lr: float
    warmup: int
    weight_decay: float
    region_weight: float  # weight of the region–phrase term (0: whole-image captions only)
    region_max_len: int  # phrase tokens
    # weight of the hard-negative term: each region against its own phrase and the phrases the caller gives as
    # its hard negatives (the recipe: the same phrase with another shape). In-batch negatives almost always
    # differ in colour or place already, so without it nothing pushes the tower to tell small shapes apart.
    hard_negative_weight: float
    # read by the recipe: also pair every empty grid cell with "<region>: empty" (`corpus.region_phrases`)
    empty_regions: bool
    # std of the initial position embeddings. CLIP's 0.02 (a norm of ~0.2 at width 128) is tiny next to a trained
    # patch embedding (norm ~25): within a few hundred steps a token never learns its place (docs/demo-model.md).
    position_init_std: float
    seed: int

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError("image_size must be a multiple of patch_size")
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must divide into num_heads")


def _caption_ids(captions: Sequence[str], tok: Any, max_len: int) -> tuple[Any, Any]:
    """Token ids (N, max_len) ending in the text tower's end token (`len(tok)`, where it pools) and the mask.
    Each distinct text is tokenized once: a synthetic world's phrases repeat by the tens of thousands."""
    import torch

    end = len(tok)
    index = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    ids = torch.zeros((len(index), max_len), dtype=torch.long)
    mask = torch.zeros((len(index), max_len), dtype=torch.long)
    for c, i in index.items():
        row = [tok.bos_token_id, *tok(c, add_special_tokens=False)["input_ids"]][: max_len - 1] + [end]
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    rows = torch.tensor([index[c] for c in captions], dtype=torch.long)
    return ids[rows], mask[rows]


def _box_weights(boxes: Any, grid: int) -> Any:
    """(..., grid*grid) weights for normalised boxes (..., 4): the fraction of each patch a box covers, summing
    to 1 per box. Vectorised: the recipe weighs ~30,000 boxes at once."""
    import torch

    x1, y1, x2, y2 = torch.as_tensor(boxes, dtype=torch.float32).unbind(-1)
    edges = torch.arange(grid + 1, dtype=torch.float32) / grid
    ox = (torch.minimum(edges[1:], x2[..., None]) - torch.maximum(edges[:-1], x1[..., None])).clamp(min=0)
    oy = (torch.minimum(edges[1:], y2[..., None]) - torch.maximum(edges[:-1], y1[..., None])).clamp(min=0)
    w = (oy[..., :, None] * ox[..., None, :]).flatten(-2)  # row-major, like the patch tokens
    return w / w.sum(dim=-1, keepdim=True).clamp(min=1e-8)


def _multi_positive_nce(logits: Any, same: Any) -> Any:
    """Symmetric InfoNCE where `same[i, j]` marks every positive pair (rows and columns each have ≥ 1)."""
    import torch.nn.functional as F

    row = F.cross_entropy(logits, same / same.sum(dim=1, keepdim=True))
    col = F.cross_entropy(logits.t(), same.t() / same.t().sum(dim=1, keepdim=True))
    return 0.5 * (row + col)


def pretrain_clip(pixels: Any, captions: Sequence[str], tokenizer_dir: str | Path, out_dir: str | Path,
                  cfg: ClipConfig, regions: Sequence[Sequence[tuple[str, Sequence[float]]]] | None = None,
                  ) -> dict[str, Any]:
    """Train the stand-in CLIP on (pixels, captions[, regions]); save the vision tower; return a report.

    Bit-reproducible on one machine (torch build, thread count): the region terms gather rows by index, and the CPU
    backward of such a gather accumulates in whatever order its threads finish unless torch is asked for
    deterministic algorithms. Without that, two runs of the recipe grew towers up to 0.05 apart in a weight and
    curricula 10 points apart."""
    import torch

    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        return _pretrain_clip(pixels, captions, tokenizer_dir, out_dir, cfg, regions)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)


def _pretrain_clip(pixels: Any, captions: Sequence[str], tokenizer_dir: str | Path, out_dir: str | Path,
                   cfg: ClipConfig, regions: Sequence[Sequence[tuple[str, Sequence[float]]]] | None,
                   ) -> dict[str, Any]:
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

    use_regions = regions is not None and cfg.region_weight > 0
    grid = cfg.image_size // cfg.patch_size
    if use_regions:
        assert len(regions) == n, (len(regions), n)
        flat = [(i, r[0], r[1]) for i, rs in enumerate(regions) for r in rs]
        reg_image = torch.tensor([i for i, _, _ in flat])  # (R,) image index of each region
        reg_weights = _box_weights([b for _, _, b in flat], grid)  # (R, grid*grid)
        texts = [p for _, p, _ in flat]
    use_hard = use_regions and cfg.hard_negative_weight > 0
    if use_hard:
        negs = [r[2] if len(r) > 2 else () for rs in regions for r in rs]
        k = len(negs[0]) if negs else 0
        if not k or any(len(x) != k for x in negs):
            raise ValueError("hard_negative_weight > 0 needs the same number (≥ 1) of hard negatives for every region")
        texts += [p for x in negs for p in x]
    if use_regions:
        # A world of 9 places, a few sizes, colours and shapes has only hundreds of distinct phrases, while a
        # batch names thousands (regions × (1 + k)): the text tower encodes each distinct one once per step.
        # `phrase_ids`/`phrase_mask` (P, L) hold them; regions and hard negatives point into that table.
        all_ids, all_mask = _caption_ids(texts, tok, cfg.region_max_len)
        phrase_ids, text_phrase = torch.unique(all_ids, dim=0, return_inverse=True)
        phrase_mask = torch.zeros_like(phrase_ids)
        phrase_mask[text_phrase] = all_mask
        reg_class = text_phrase[: len(flat)]  # (R,) phrase of each region: equal phrases are positives
        if use_hard:
            hard_phrase = text_phrase[len(flat):].view(len(flat), k)  # (R, k)

    vision = dict(hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                  num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                  image_size=cfg.image_size, patch_size=cfg.patch_size, hidden_act="gelu")
    text = dict(vocab_size=len(tok) + 1, hidden_size=cfg.text_hidden_size, intermediate_size=4 * cfg.text_hidden_size,
                num_hidden_layers=cfg.text_layers, num_attention_heads=4, max_position_embeddings=cfg.text_max_len,
                bos_token_id=tok.bos_token_id, eos_token_id=len(tok), pad_token_id=tok.unk_token_id)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=cfg.projection_dim))
    with torch.no_grad():
        model.vision_model.embeddings.position_embedding.weight.normal_(0.0, cfg.position_init_std)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    gen = torch.Generator().manual_seed(cfg.seed)
    batches, losses, accs, reg_accs, hard_accs = shuffled_batches(n, cfg.batch_size, gen), [], [], [], []
    model.train()
    for step, idx in zip(range(cfg.steps), batches):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, cfg.steps, cfg.lr, cfg.warmup)
        vis = model.vision_model(pixel_values=pixels[idx])
        img = F.normalize(model.visual_projection(vis.pooler_output), dim=-1)
        txt = model.text_model(input_ids=ids[idx], attention_mask=mask[idx])
        cap = F.normalize(model.text_projection(txt.pooler_output), dim=-1)
        scale = model.logit_scale.exp()
        logits = scale * img @ cap.t()  # (B, B)
        same = (caption_class[idx][:, None] == caption_class[idx][None, :]).float()
        loss = _multi_positive_nce(logits, same)
        if use_regions:
            # regions of this batch's images; `slot` maps each to its image's row in the batch
            slot_of = torch.full((n,), -1, dtype=torch.long)
            slot_of[idx] = torch.arange(len(idx))
            sel = (slot_of[reg_image] >= 0).nonzero().squeeze(1)
            patches = model.vision_model.post_layernorm(vis.last_hidden_state[:, 1:])  # (B, grid², H)
            pooled = torch.einsum("rp,rph->rh", reg_weights[sel], patches[slot_of[reg_image[sel]]])
            reg = F.normalize(model.visual_projection(pooled), dim=-1)
            wanted = reg_class[sel] if not use_hard else torch.cat([reg_class[sel], hard_phrase[sel].flatten()])
            used, where = torch.unique(wanted, return_inverse=True)  # the batch's distinct phrases
            ptxt = model.text_model(input_ids=phrase_ids[used], attention_mask=phrase_mask[used])
            emb = F.normalize(model.text_projection(ptxt.pooler_output), dim=-1)  # (P_b, D)
            phr = emb[where[: len(sel)]]  # (R_b, D)
            reg_logits = scale * reg @ phr.t()  # (R_b, R_b)
            reg_same = (reg_class[sel][:, None] == reg_class[sel][None, :]).float()
            loss = loss + cfg.region_weight * _multi_positive_nce(reg_logits, reg_same)
            if use_hard:  # (R_b, 1 + k): own phrase first, then its hard negatives
                neg = emb[where[len(sel):]].view(len(sel), k, -1)
                hard_logits = torch.cat([reg_logits.diagonal()[:, None],  # each region's own phrase
                                         scale * torch.einsum("rh,rkh->rk", reg, neg)], dim=1)
                target = torch.zeros(len(sel), dtype=torch.long)
                loss = loss + cfg.hard_negative_weight * F.cross_entropy(hard_logits, target)
                hard_accs.append((hard_logits.argmax(dim=1) == 0).float().mean().item())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)  # CLIP caps the temperature at 100
            accs.append(same[torch.arange(len(idx)), logits.argmax(dim=1)].mean().item())
            if use_regions:
                reg_accs.append(reg_same[torch.arange(len(sel)), reg_logits.argmax(dim=1)].mean().item())
        losses.append(loss.item())
        if step % 50 == 0 or step == cfg.steps - 1:
            log.info("clip step %d/%d loss %.4f i→t acc %.3f region acc %.3f", step, cfg.steps, loss.item(),
                     accs[-1], reg_accs[-1] if reg_accs else float("nan"))

    tower = CLIPVisionModel(CLIPVisionConfig(**vision))
    tower.load_state_dict(model.vision_model.state_dict(), strict=True)
    out_path = Path(out_dir)
    out_path.mkdir(parents=True, exist_ok=True)
    tower.save_pretrained(str(out_path))

    def tail(xs: list[float]) -> float | None:
        return round(sum(xs[-20:]) / len(xs[-20:]), 3) if xs else None

    return {"pairs": n, "distinct_captions": int(caption_class.max()) + 1, "steps": cfg.steps,
            "regions": int(reg_image.numel()) if use_regions else 0,
            "final_loss": tail(losses), "final_i2t_acc": tail(accs), "final_region_acc": tail(reg_accs),
            "final_hard_negative_acc": tail(hard_accs),
            "seconds": round(time.time() - t0, 1), "config": asdict(cfg)}
