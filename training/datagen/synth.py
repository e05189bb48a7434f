"""`llava-local data synth`: scenes → images + COCO annotations → the generation pipeline with the teacher.

Contract: `synthesize(n, seed, out_dir, ...)` writes, all deterministic in (n, seed, size, world config):

    out_dir/images/s000000.png ...   rendered scenes (size × size RGB)
    out_dir/captions.json            COCO captions (3 per image)
    out_dir/instances.json           COCO instances: "colour shape" categories, pixel [x, y, w, h] boxes
    out_dir/records.jsonl            the same as {"id", "image", "captions", "boxes"} (normalised boxes)
    out_dir/pretrain.json            stage-1 LLaVA JSON (brief request + caption)
    out_dir/instruct.json            conversation + detail + complex_reasoning for every scene, checked
    out_dir/instruct.<type>.json     the same split by type
    out_dir/questions.jsonl          evaluation questions: {"id", "image", "question", "answer", "type"}
    out_dir/instruct.stats.json      counts, rejects, timings

The instruction data goes through the same pipeline as `generate` (symbolic context → backend → parser
→ checker → journal), with the rule-based teacher as the backend, so a resumed synth run is also exact.
"""

from __future__ import annotations

import json
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .backends import TeacherBackend
from .checker import check_turns
from .pipeline import Settings, run, write_json
from .pretrain import make_pretrain
from .records import Box, ImageRecord
from .render import render
from .teacher import QTYPES, captions, sample_qa
from .world import COLOURS, SHAPES, Scene, WorldConfig, make_scene, scene_from_boxes

CATEGORIES = [{"id": i + 1, "name": f"{c} {s}", "supercategory": s}
              for i, (c, s) in enumerate((c, s) for s in SHAPES for c in COLOURS)]
_CAT_ID = {c["name"]: c["id"] for c in CATEGORIES}


def scene_record(scene: Scene, seed: int) -> ImageRecord:
    """The record the pipeline sees for a scene: image path, captions, normalised boxes."""
    caps = captions(scene, random.Random(f"captions:{seed}:{scene.key}"))
    return ImageRecord(scene.key, f"images/{scene.key}.png", tuple(caps),
                       tuple(Box(o.category, o.box) for o in scene.objects))


def eval_questions(scene: Scene, image: str, seed: int) -> list[dict]:
    """One question per evaluation type where the scene allows one."""
    rng = random.Random(f"questions:{seed}:{scene.key}")
    out = []
    for t in QTYPES:
        qa = sample_qa(scene, rng, t)
        if qa is not None:
            out.append({"id": f"{scene.key}-{t}", "image": image, "question": qa.question, "answer": qa.answer,
                        "type": t})
    return out


def synthesize(n: int, seed: int, out_dir: Path, *, size: int = 96, world: WorldConfig = WorldConfig(),
               restart: bool = False, progress: bool = True) -> dict:
    """Make `n` scenes and everything listed in the module docstring; returns the stats."""
    t0 = time.monotonic()
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    records, coco_images, coco_caps, coco_boxes, questions = [], [], [], [], []
    scenes = [make_scene(seed, i, world) for i in range(n)]

    def draw(scene: Scene) -> None:
        render(scene, size).save(out_dir / "images" / f"{scene.key}.png", compress_level=1)

    # PIL drops the GIL while encoding and writing, so two threads keep both cores busy (≈0.6 ms CPU per image).
    with ThreadPoolExecutor(max_workers=2) as pool:
        drawn = pool.map(draw, scenes)
        for i, scene in enumerate(scenes):
            rec = scene_record(scene, seed)
            records.append(rec)
            coco_images.append({"id": i, "file_name": rec.image, "width": size, "height": size})
            coco_caps += [{"id": len(coco_caps) + 1, "image_id": i, "caption": c} for c in rec.captions]
            for o in scene.objects:
                x1, y1, x2, y2 = (v * size for v in o.box)
                coco_boxes.append({"id": len(coco_boxes) + 1, "image_id": i, "category_id": _CAT_ID[o.category],
                                   "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                                   "area": round((x2 - x1) * (y2 - y1), 2), "iscrowd": 0})
            questions += eval_questions(scene, rec.image, seed)
        list(drawn)  # re-raise any rendering error
    t_render = time.monotonic() - t0  # scenes, images, captions, COCO rows and questions
    write_json(out_dir / "captions.json", {"images": coco_images, "annotations": coco_caps, "categories": []})
    write_json(out_dir / "instances.json", {"images": coco_images, "annotations": coco_boxes, "categories": CATEGORIES})
    with open(out_dir / "records.jsonl", "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps({"id": r.id, "image": r.image, "captions": list(r.captions),
                                 "boxes": [{"category": b.category, "bbox": list(b.bbox)} for b in r.boxes]}) + "\n")
    with open(out_dir / "questions.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(q) + "\n" for q in questions)
    pretrain, pstats = make_pretrain(records, out_dir, seed)
    write_json(out_dir / "pretrain.json", pretrain)
    settings = Settings(per_image=3, seed=seed, dedup="image", check_scenes=True)
    stats = run(records, TeacherBackend(), settings, out_dir / "instruct.json", restart=restart, progress=progress,
                split=True, batch=512, workers=min(2, os.cpu_count() or 1), extra_stats={
                    "scenes": n, "image_size": size, "pretrain_samples": pstats["samples"],
                    "questions": len(questions), "render_seconds": round(t_render, 3),
                })
    stats["total_seconds"] = round(time.monotonic() - t0, 3)
    write_json(out_dir / "instruct.stats.json", stats, indent=1)
    return stats


def verify(out_dir: Path, name: str = "instruct.json") -> dict:
    """Re-check every answer in `out_dir/name` against the scenes in records.jsonl, from the files alone."""
    scenes = {}
    with open(out_dir / "records.jsonl", encoding="utf-8") as fh:
        for line in fh:
            r = json.loads(line)
            scenes[r["image"]] = scene_from_boxes(r["id"], r["boxes"])
    samples = json.loads((out_dir / name).read_text(encoding="utf-8"))
    failures, claims = [], 0
    for s in samples:
        conv = s["conversations"]
        turns = [(conv[i]["value"].replace("<image>\n", ""), conv[i + 1]["value"]) for i in range(0, len(conv), 2)]
        result = check_turns(scenes[s["image"]], turns)
        claims += result.n_claims
        if not result.ok:
            failures.append((s["id"], result.errors))
    return {"samples": len(samples), "claims": claims, "failures": failures}
