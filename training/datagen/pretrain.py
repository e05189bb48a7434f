"""Stage-1 (feature alignment) data: image–caption pairs → LLaVA JSON.

Contract: `make_pretrain(records, image_root, seed, all_captions)` returns (samples, stats). Each sample is
one human turn "<image>\\n" + a brief-description request (a seeded choice from `BRIEF_REQUESTS`, fixed by
the seed and the sample id) and one gpt turn, the caption. One caption per image (a seeded choice) unless
`all_captions`. Records whose image file is missing under `image_root` are dropped and counted in
`stats["missing_images"]` (the first few paths in `stats["missing_examples"]`); records without a caption
are counted in `stats["no_caption"]`. If no image at all is found we raise: the image root is wrong.
"""

from __future__ import annotations

import random
from pathlib import Path

from .prompts import BRIEF_REQUESTS
from .records import DatagenError, ImageRecord, check_images


def make_pretrain(records: list[ImageRecord], image_root: Path, seed: int = 0,
                  all_captions: bool = False) -> tuple[list[dict], dict]:
    """LLaVA stage-1 samples and counts (see module docstring)."""
    kept, missing = check_images(records, image_root)
    if records and not kept:
        raise DatagenError(
            f"none of the {len(records)} images exist under {image_root} (e.g. {missing[0]}); pass --image-root")
    samples, no_caption = [], 0
    for r in kept:
        caps = [c for c in r.captions if c]
        if not caps:
            no_caption += 1
            continue
        rng = random.Random(f"pretrain:{seed}:{r.id}")
        chosen = list(enumerate(caps)) if all_captions else [rng.choice(list(enumerate(caps)))]
        for k, cap in chosen:
            sid = f"{r.id}-{k}" if all_captions else r.id
            ask = BRIEF_REQUESTS[random.Random(f"ask:{seed}:{sid}").randrange(len(BRIEF_REQUESTS))]
            samples.append({
                "id": sid, "image": r.image,
                "conversations": [{"from": "human", "value": "<image>\n" + ask}, {"from": "gpt", "value": cap}],
            })
    stats = {
        "records": len(records), "samples": len(samples), "missing_images": len(missing),
        "missing_examples": missing[:5], "no_caption": no_caption,
    }
    return samples, stats
