"""The demo model's data: scenes, rendered images and every text the recipe trains on.

Contract (all deterministic in the world seed):
- `make_scenes(seed, n)` → the first `n` scenes of world `seed` (`training.datagen.world`).
- `eval_items(scene, rng)` → one teacher question per evaluation type (`QTYPES`) with its canonical answer,
  and `prompt_of(qa)` the user text the model sees (short-answer types get LLaVA-1.5's VQA suffix).
- `build_dataset(out_dir, scenes, image_size, seed, mix)` renders the images and writes
  `stage1.json` (image + caption, for the `plain` template; with `mix.layout_captions`, also image + the scene
  written out region by region) and `stage2.json` (the paper's mix — conversation / detail /
  complex_reasoning from the rule-based teacher — plus multi-turn VQA turns for the evaluation types, in the
  proportions of `mix.vqa_weights`, and "Where is each shape?" layout turns), and the curriculum between them:
  `listing.json` (one `listing(scene)` per image: every object's name followed by its region, `plain`) and
  `lookup.json` (`LOOKUP_RECORDS` multi-turn records per image asking only where things are, `vicuna_v1`) and
  `relation.json` (`RELATION_RECORDS` per image asking only relation and relative-position questions, `vicuna_v1`);
  all LLaVA JSON with paths relative to `out_dir`.
- `text_corpus(scenes, seed, mix)` → world text for the tokenizer and the base LLaMA: captions, written-out
  scenes (with `mix.layout_captions`), and chats about a scene written out in words (where LLaVA puts the
  image), as `(text, trainable)` segments; `grounded_prompt(scene, question)` the same layout as a question
  to answer (the text-only eval, `evaluate.evaluate_text`).
- `region_phrases(scene)` → the stand-in CLIP's region–phrase pairs, with shape-swapped hard negatives.

Short answers are what the eval checks, so they follow the teacher's canonical forms exactly ("red",
"circle", "2", "top left", "yes"); the suffix tells the model when a short answer is wanted, as in LLaVA-1.5.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from llava_local.templates import IMAGE_TOKEN, VICUNA_SYSTEM, Turn, get_template
from training.datagen import teacher
from training.datagen.parse import Rejected, parse_response
from training.datagen.prompts import DETAIL_REQUESTS, RTYPES
from training.datagen.render import render
from training.datagen.world import COLOURS, REGIONS, SHAPES, SIZES, Scene, make_scene, referable

from .phrasings import NATURAL_ASK, casual

SHORT_ANSWER = "Answer the question using a single word or phrase."  # LLaVA-1.5's VQA instruction
QTYPES: tuple[str, ...] = teacher.QTYPES  # colour shape count position relation existence description
# "relative" (where one shape is relative to another) is not an eval type: it is the relation curriculum's way in
# "locate" (where all the shapes of a kind are) and "tally" (how many, asked mostly where there are several) are the
# counting mix's
VQA_KINDS: tuple[str, ...] = (*QTYPES, "layout", "relative", "locate", "tally")
ONLY_POSITION = {kind: int(kind == "position") for kind in VQA_KINDS}  # `_vqa_turns` weights of `lookup.json`
ONLY_RELATIONS = {kind: int(kind in ("relation", "relative")) for kind in VQA_KINDS}  # ... of `relation.json`
ONLY_COUNTING = {kind: int(kind in ("locate", "tally")) for kind in VQA_KINDS}  # ... of `mix.counting` records
# "layout" turns ask where every shape is; the answer is the scene written out, region by region
LAYOUT_REQUESTS = ("Where is each shape?", "Where are the shapes in the image?", "List the shapes and where they are.")
Doc = list[tuple[str, bool]]  # a text document as (text, trainable) segments
LOOKUP_RECORDS = 2  # position-only VQA records per image in `lookup.json`
RELATION_RECORDS = 2  # relation and relative-position records per image in `relation.json`


@dataclass(frozen=True)
class DataMix:
    """How many stage-2 records of each kind, per rendered scene (fractions may exceed 1: reuse images). No defaults:
    the recipe's values are in recipe.yaml (`mix:`)."""

    vqa: float  # multi-turn short-answer records
    vqa_turns: tuple[int, int]  # questions per VQA record (min, max)
    # how often each question kind comes up in a VQA record, relative to 1 for kinds not named; kinds are
    # QTYPES plus "layout" (where is each shape: the written-out scene, `LAYOUT_REQUESTS`)
    vqa_weights: dict[str, int]
    layout_captions: float  # stage-1 records per scene whose caption is the written-out scene
    relations: float  # extra stage-2 records per scene like `relation.json`'s (own stream): keeps the skill
    counting: float  # extra stage-2 records per scene of "where are the circles?" and counts (own stream)
    # how stage 2's captions and descriptions order their kinds (`teacher.KIND_ORDERS`); stage 1, the curriculum and
    # the base LLaMA's text keep reading order either way
    description_order: str
    conversation: float  # the paper's three response types, from the rule-based teacher
    detail: float
    complex_reasoning: float
    # the share of stage 2's and the base LLaMA's evaluation-type questions asked in `phrasings.NATURAL_ASK`'s
    # wordings, typed casually; half of those come without the short-answer instruction and get a sentence
    natural: float

    def __post_init__(self) -> None:
        bad = sorted(set(self.vqa_weights) - set(VQA_KINDS))
        if bad:
            raise ValueError(f"vqa_weights: unknown kind {bad[0]!r}; known: {', '.join(VQA_KINDS)}")
        if self.description_order not in teacher.KIND_ORDERS:
            raise ValueError(f"description_order: {self.description_order!r}; known: {', '.join(teacher.KIND_ORDERS)}")


def make_scenes(seed: int, n: int, start: int = 0) -> list[Scene]:
    """Scenes `start .. start+n-1` of world `seed`."""
    return [make_scene(seed, i) for i in range(start, start + n)]


def prompt_of(qa: teacher.QA) -> str:
    """The user text for a teacher question: description questions as is, the others ask for a short answer."""
    return qa.question if qa.qtype == "description" else f"{qa.question}\n{SHORT_ANSWER}"


def eval_items(scene: Scene, rng: random.Random, qtypes: Sequence[str] = QTYPES) -> list[teacher.QA]:
    """One question per type (types the scene cannot support, e.g. no uniquely named object, are skipped)."""
    return [qa for t in qtypes if (qa := teacher.sample_qa(scene, rng, t)) is not None]


def natural_turn(scene: Scene, rng: random.Random, kind: str) -> tuple[str, str] | None:
    """A question of evaluation type `kind` as people ask it (`phrasings.NATURAL_ASK`, `casual`): half the time with
    the short-answer instruction and the short answer, else on its own with the teacher's sentence ("The circle is
    red.", "Yes, there is a red circle."), which is how a question without the instruction is answered."""
    qa = teacher.sample_qa(scene, rng, kind, NATURAL_ASK)
    if qa is None:
        return None
    return as_people_ask(qa.question, qa.answer, qa.sentence, rng, sentence_only=qa.qtype == "description")


def as_people_ask(question: str, answer: str, sentence: str, rng: random.Random,
                  sentence_only: bool = False) -> tuple[str, str]:
    """`question` typed casually; half the time (always with `sentence_only`) on its own and answered with
    `sentence`, else with the short-answer instruction and the short `answer`."""
    question = casual(question, rng)
    if sentence_only or rng.random() < 0.5:
        return question, sentence
    return f"{question}\n{SHORT_ANSWER}", answer


def _vqa_turn(scene: Scene, rng: random.Random, kind: str, natural: float = 0.0) -> tuple[str, str] | None:
    if natural and kind in QTYPES and rng.random() < natural:
        return natural_turn(scene, rng, kind)
    if kind == "layout":
        return rng.choice(LAYOUT_REQUESTS), scene_text(scene)
    if kind == "relative":
        return relative_turn(scene, rng)
    if kind in ("locate", "tally"):
        return counting_turn(scene, rng, kind, natural)
    qa = teacher.sample_qa(scene, rng, kind)
    return None if qa is None else (prompt_of(qa), qa.answer)


def _vqa_turns(scene: Scene, rng: random.Random, k: int, weights: Mapping[str, int] | None = None,
               natural: float = 0.0) -> list[tuple[str, str]]:
    """`k` turns, kinds spread in proportion to `weights` (default: the QTYPES evenly), no question twice; a
    `natural` share of the evaluation-type questions in people's wordings (`natural_turn`)."""
    weights = {t: 1 for t in QTYPES} | dict(weights or {})
    kinds = [t for t in VQA_KINDS for _ in range(weights.get(t, 0))]
    kinds = kinds * (k // len(kinds) + 1)
    rng.shuffle(kinds)
    turns, seen = [], set()
    for t in kinds:
        turn = _vqa_turn(scene, rng, t, natural)
        if turn is None or turn[0] in seen:
            continue
        seen.add(turn[0])
        turns.append(turn)
        if len(turns) == k:
            break
    return turns


def relative_turn(scene: Scene, rng: random.Random) -> tuple[str, str] | None:
    """Where one named object is relative to another, as a short answer: "to the left and above", "below".

    The relation curriculum's question. A yes/no relation ("Is the red circle to the left of the blue square?")
    depends on the relation word and on both cells together, and no one of them predicts the answer alone, so its
    loss gives the LLaMA nothing to start from (fine-tuned on them, its loss stays flat at 0.345, exactly
    chance). Here the first named object's cell alone predicts most of the answer, so the two lookups and the
    comparison can form a piece at a time; the yes/no questions mixed in with them then follow."""
    named = referable(scene)
    if len(named) < 2:
        return None
    (a, ref_a), (b, ref_b) = rng.sample(named, 2)
    across = "to the left" if a.col < b.col else "to the right" if a.col > b.col else ""
    up_down = "above" if a.row < b.row else "below" if a.row > b.row else ""  # never both empty: one per cell
    return (f"Where is the {ref_a} relative to the {ref_b}?\n{SHORT_ANSWER}",
            " and ".join(part for part in (across, up_down) if part))


def counting_turn(scene: Scene, rng: random.Random, kind: str, natural: float = 0.0) -> tuple[str, str]:
    """A count ("tally") or where all the shapes of one kind are ("locate": "Where are the circles?" → "top left and
    center", "nowhere"), for a kind of shape that occurs at least twice when the scene has one, half the time. The
    teacher's own count questions are about one shape or none nine times in ten, and a model trained on them alone
    answered every count with 0 or 1 (docs/demo-model-history.md); a list of places is a count that can be learned one
    place at a time. A `natural` share of the tallies is asked in people's wordings (as `natural_turn`), so counts of
    several are not learned in the teacher's wording only."""
    kinds = teacher.count_kinds(scene)
    several = [k for k in kinds if len(scene.matching(**k)) >= 2]
    chosen = rng.choice(several if several and rng.random() < 0.5 else kinds)
    found = scene.matching(**chosen)
    noun = teacher.kind_noun(chosen)
    if kind == "tally":
        if natural and rng.random() < natural:
            return as_people_ask(rng.choice(NATURAL_ASK["count"]).format(ref=noun + "s"), str(len(found)),
                                 teacher.count_sentence(noun, len(found)), rng)
        return f"{rng.choice(teacher.ASK['count']).format(ref=noun + 's')}\n{SHORT_ANSWER}", str(len(found))
    places = teacher.join_and([o.region for o in found]) or "nowhere"  # reading order, as the image tokens lie
    return f"Where are the {noun}s?\n{SHORT_ANSWER}", places


def _teacher_turns(scene: Scene, rtype: str, rng: random.Random) -> list[tuple[str, str]]:
    """A teacher response of `rtype` through datagen's own parser (the path an LLM's answer takes)."""
    try:
        turns = parse_response(rtype, teacher.respond(scene, rtype, rng))
    except Rejected:
        return []
    if rtype == "detail":
        turns = [(rng.choice(DETAIL_REQUESTS), turns[0][1])]
    return turns


def _record(rid: str, image: str, turns: Sequence[tuple[str, str]]) -> dict[str, Any]:
    conv = []
    for j, (q, a) in enumerate(turns):
        conv.append({"from": "human", "value": f"{IMAGE_TOKEN}\n{q}" if j == 0 else q})
        conv.append({"from": "gpt", "value": a})
    return {"id": rid, "image": image, "conversations": conv}


def _count(rate: float, rng: random.Random) -> int:
    """`rate` records per scene on average: the integer part always, the fraction by chance."""
    return int(rate) + (1 if rng.random() < rate - int(rate) else 0)


def stage2_records(scene: Scene, image: str, rng: random.Random, mix: DataMix) -> Iterator[dict[str, Any]]:
    """The stage-2 records of one scene, in the data mix's proportions."""
    for i in range(_count(mix.vqa, rng)):
        turns = _vqa_turns(scene, rng, rng.randint(*mix.vqa_turns), mix.vqa_weights, mix.natural)
        if turns:
            yield _record(f"{scene.key}-vqa{i}", image, turns)
    for rtype in RTYPES:  # the paper's three response types
        for i in range(_count(getattr(mix, rtype), rng)):
            turns = _teacher_turns(scene, rtype, rng)
            if turns:
                yield _record(f"{scene.key}-{rtype}{i}", image, turns)


def _question_chats(scene: Scene, image: str, tag: str, n: int, rng: random.Random, weights: Mapping[str, int],
                    mix: DataMix, natural: float = 0.0) -> Iterator[dict[str, Any]]:
    """Up to `n` multi-turn chats of short questions of the kinds `weights` names (ids "<scene>-<tag><i>"), each
    `mix.vqa_turns` long: the curriculum's chats (teacher wordings) and stage 2's extra ones (`natural`: the share
    in people's wordings), each kind from its own random stream."""
    for i in range(n):
        if turns := _vqa_turns(scene, rng, rng.randint(*mix.vqa_turns), weights, natural):
            yield _record(f"{scene.key}-{tag}{i}", image, turns)


def build_dataset(out_dir: str | Path, scenes: Sequence[Scene], image_size: int, seed: int,
                  mix: DataMix) -> dict[str, Any]:
    """Render `scenes` to `out_dir/images/*.png` and write `stage1.json`, the curriculum's `listing.json` and
    `lookup.json`, and `stage2.json`; return counts."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"demo-data:{seed}")
    # the curriculum's data draws from its own random streams, so stage 1's and stage 2's records stay as they were
    listing_rng, lookup_rng = random.Random(f"demo-listing:{seed}"), random.Random(f"demo-lookup:{seed}")
    relation_rng, relations_rng = random.Random(f"demo-relation:{seed}"), random.Random(f"demo-relations:{seed}")
    counting_rng = random.Random(f"demo-counting:{seed}")
    stage1, stage2, listings, lookups, relations = [], [], [], [], []
    for scene in scenes:
        name = f"images/{scene.key}.png"
        path = out / name
        if not path.exists():
            render(scene, image_size).save(path, optimize=False, compress_level=1)
        caption = teacher.captions(scene, rng, 1)[0]
        stage1.append(_record(f"{scene.key}-cap", name, [(rng.choice(teacher.ASK["description"]), caption)]))
        for i in range(_count(mix.layout_captions, rng)):  # align each image token with its region words too
            stage1.append(_record(f"{scene.key}-layout{i}", name, [(rng.choice(LAYOUT_REQUESTS), scene_text(scene))]))
        with teacher.kind_order(mix.description_order):  # the order changes text only, never a random draw
            stage2.extend(stage2_records(scene, name, rng, mix))
            stage2.extend(_question_chats(scene, name, "relations", _count(mix.relations, relations_rng),
                                          relations_rng, ONLY_RELATIONS, mix, mix.natural))
            stage2.extend(_question_chats(scene, name, "counting", _count(mix.counting, counting_rng), counting_rng,
                                          ONLY_COUNTING, mix, mix.natural))
        if text := listing(scene, listing_rng):
            listings.append(_record(f"{scene.key}-list", name, [(listing_rng.choice(LAYOUT_REQUESTS), text)]))
        lookups.extend(_question_chats(scene, name, "where", LOOKUP_RECORDS, lookup_rng, ONLY_POSITION, mix))
        relations.extend(_question_chats(scene, name, "rel", RELATION_RECORDS, relation_rng, ONLY_RELATIONS, mix))
    rng.shuffle(stage2)
    for fname, recs in (("stage1.json", stage1), ("stage2.json", stage2), ("listing.json", listings),
                        ("lookup.json", lookups), ("relation.json", relations)):
        (out / fname).write_text(json.dumps(recs), encoding="utf-8")
    kinds: dict[str, int] = {}
    for r in stage2:
        kind = r["id"].rsplit("-", 1)[-1].rstrip("0123456789")
        kinds[kind] = kinds.get(kind, 0) + 1
    return {"images": len(scenes), "stage1": len(stage1), "stage2": len(stage2), "listing": len(listings),
            "lookup": len(lookups), "relation": len(relations), "stage2_kinds": kinds,
            "stage2_turns": sum(len(r["conversations"]) // 2 for r in stage2)}


def listing(scene: Scene, rng: random.Random) -> str:
    """Every object a unique phrase names, in random order, each right after its name: "red circle: top left.
    square: center." The curriculum stage's answers: with the region next to the name, the LLaMA learns to find
    the named object's image token, which it does not learn from questions where the name sits far from the answer
    (position questions alone stay at the bag level, 45.7%; after 750 listing steps, 81.3% with a perfect tower:
    docs/demo-model-history.md, sixth and eighth rounds). Random order, so reading the cells in turn cannot do it."""
    named = referable(scene)
    rng.shuffle(named)
    return " ".join(f"{ref}: {o.region}." for o, ref in named)


def _chat_segments(turns: Sequence[tuple[str, str]], template: str = "vicuna_v1") -> Doc:
    """A conversation in the chat template's layout, image slots left out (so "USER:" etc. become tokens), as
    (text, trainable) segments: trainable = the assistant's answers."""
    flat = [Turn(role, text) for q, a in turns for role, text in (("user", q), ("assistant", a))]
    return [(p.text, p.trainable) for p in get_template(template).render(flat, add_generation_prompt=False)]


def doc_text(doc: str | Doc) -> str:
    """A corpus document as plain text (what the tokenizer trains on)."""
    return doc if isinstance(doc, str) else "".join(text for text, _ in doc)


def scene_text(scene: Scene) -> str:
    """The scene written out in reading order, as the image's patch tokens lay it out ("top left: a small red
    circle. center: a large blue square.")."""
    return " ".join(f"{o.region}: {teacher.article(o.phrase())}." for o in scene.objects)


def region_phrases(scene: Scene, empty_cells: bool = False,
                   ) -> list[tuple[str, tuple[float, float, float, float], list[str]]]:
    """Each object's entry in the written scene ("top left: small red circle"), its box, and as hard negatives
    the same entry with each other shape: the stand-in CLIP's region–phrase pairs. With `empty_cells`, also each
    empty grid cell as "top left: empty" over the whole cell, with as many objects at that place (seeded by the
    scene) as its hard negatives: a token that never learned what "empty" looks like half-matches some object's
    name, which keeps the LLM from finding the object a question names (with empty cells' features left at zero
    the lookup probe reached 78.0%, with a best-match object's 42.3%)."""
    pairs = [(f"{o.region}: {o.phrase()}", o.box,
              [f"{o.region}: {replace(o, shape=s).phrase()}" for s in SHAPES if s != o.shape]) for o in scene.objects]
    if empty_cells:
        rng = random.Random(f"empty-cells:{scene.key}")
        occupied = {(o.row, o.col) for o in scene.objects}
        for (row, col), region in REGIONS.items():
            if (row, col) not in occupied:
                objects = [f"{region}: {rng.choice(tuple(SIZES))} {rng.choice(tuple(COLOURS))} {shape}"
                           for shape in rng.sample(SHAPES, len(SHAPES) - 1)]
                pairs.append((f"{region}: empty", (col / 3, row / 3, (col + 1) / 3, (row + 1) / 3), objects))
    return pairs


def grounded_chat(scene: Scene, turns: Sequence[tuple[str, str]]) -> Doc:
    """A chat whose first user turn carries the scene as text where a real one carries the image. This is what
    a text-only LLM (Vicuna) already knows how to do, answering from context, and what LLaVA's two stages
    then transfer to image tokens; a base model that never saw it cannot answer even from a written scene."""
    if not turns:
        return []
    first = (f"{scene_text(scene)}\n{turns[0][0]}", turns[0][1])
    return _chat_segments([first, *turns[1:]])


def grounded_prompt(scene: Scene, question: str) -> Doc:
    """`grounded_chat`'s first user turn with the assistant's turn opened: a question put to a text-only LLaMA,
    the scene written out where the image goes, laid out exactly as the base LLaMA was trained."""
    turn = Turn("user", f"{scene_text(scene)}\n{question}")
    return [(p.text, p.trainable) for p in get_template("vicuna_v1").render([turn], add_generation_prompt=True)]


def text_corpus(scenes: Sequence[Scene], seed: int, mix: DataMix) -> list[str | Doc]:
    """World text for the tokenizer and the base LLaMA, one document per entry. Per scene: a chat of short
    questions and one of the paper's response types (conversation, detail, complex reasoning), both grounded
    in the scene written out (`grounded_chat`), and a caption. Questions never come without their scene:
    ungrounded Q/A would teach the model to answer from priors, which is the habit LLaVA must not have.

    Plain strings are trained on every token; chats are `Doc` segments, trained on the answers only (as
    Vicuna's chat tuning and LLaVA's stage 2 are). A few-token answer in a 150-token chat would otherwise be
    a rounding error in the loss, and answering from context is the skill the model most needs."""
    rng = random.Random(f"demo-text:{seed}")
    docs: list[str | Doc] = [VICUNA_SYSTEM, SHORT_ANSWER, *DETAIL_REQUESTS]
    for scene in scenes:
        docs.append(grounded_chat(scene, _vqa_turns(scene, rng, rng.randint(3, 6), mix.vqa_weights, mix.natural)))
        docs.append(grounded_chat(scene, _teacher_turns(scene, rng.choice(RTYPES), rng)))
        docs.extend(teacher.captions(scene, rng, 1))
        if mix.layout_captions:  # so the frozen LLM of stage 1 can write the layout captions it is aligned on
            docs.append(scene_text(scene))
    return [d for d in docs if d]
