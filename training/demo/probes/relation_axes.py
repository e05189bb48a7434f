"""Diagnostic: which relations does a model get right, by axis and by whether reading order gives the answer away?

`python -m training.demo.probes.relation_axes CKPT [--n 300] [--seed 1000]` (a layout-c checkpoint, e.g.
`build/demo/polish`; torch, both phrasing splits, about a minute at n=300).

Contract:
- `classify(scene, question)` → `(axis, order)` for a yes/no relation question of the eval: `axis` is "left-right" or
  "above-below"; `order` says what the image tokens' reading order (row by row, the order the LLaMA reads them in)
  tells about the answer: "agrees" (the object that comes first is the left / upper one) or "disagrees" (it is the
  right / lower one), and "same-row" for left-right questions about two objects in one row (reading order is then
  column order). A model that answers from reading order alone gets "agrees" and "same-row" right and "disagrees"
  wrong. Above-below questions always "agree": the upper object always comes first, so a model can answer them
  without comparing the two cells, and only left-right questions show whether it does. A question the teacher would
  not ask (both objects in the line the relation compares) is a `ValueError`.
- `breakdown(eval_items, result)` → `{split key: (correct, total)}` over an `EvalResult`'s relation items, keyed
  "axis/order".
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Sequence

from training.datagen.world import Obj, Scene, referable

_REL = re.compile(r"\b(to the left of|to the right of|above|below)\b")


def _named(scene: Scene, text: str) -> Obj:
    """The object `text` names: the longest unique reference ("the small red circle") that occurs in it."""
    hits = [(len(ref), o) for o, ref in referable(scene) if re.search(rf"\bthe {re.escape(ref)}\b", text.lower())]
    if not hits:
        raise ValueError(f"no object of the scene is named in {text!r}")
    return max(hits, key=lambda h: h[0])[1]


def classify(scene: Scene, question: str) -> tuple[str, str]:
    """(axis, order) of a relation question about `scene`; see the module contract."""
    first_line = question.split("\n")[0]
    m = _REL.search(first_line.lower())
    if m is None:
        raise ValueError(f"not a relation question: {question!r}")
    a, b = _named(scene, first_line[:m.start()]), _named(scene, first_line[m.end():])
    if m.group(1) in ("above", "below"):
        axis, same, lesser = "above-below", a.row == b.row, a.row < b.row
    else:
        axis, same, lesser = "left-right", a.col == b.col, a.col < b.col
    if same:
        raise ValueError(f"neither relation holds in {question!r}: both objects are in one {axis} line")
    if axis == "left-right" and a.row == b.row:
        return axis, "same-row"
    a_first = (a.row, a.col) < (b.row, b.col)
    return axis, "agrees" if a_first == lesser else "disagrees"


def breakdown(eval_items: Sequence, result) -> dict[str, tuple[int, int]]:
    """"axis/order" → (correct, total) over the relation questions of `eval_items` and their `result` items."""
    right, total = Counter(), Counter()
    for item, outcome in zip(eval_items, result.items, strict=True):
        if outcome["type"] != "relation":
            continue
        key = "/".join(classify(item.scene, item.qa.question))
        total[key] += 1
        right[key] += bool(outcome["correct"])
    return {k: (right[k], total[k]) for k in sorted(total)}


def main(argv: list[str] | None = None) -> int:
    from training.demo.evaluate import eval_set, evaluate_torch

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", help="layout-c checkpoint (llava-local train output)")
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--seed", type=int, default=1000)
    args = p.parse_args(argv)
    for phrasing in ("teacher", "heldout"):
        items = eval_set(args.n, args.seed, phrasing=phrasing)
        result = evaluate_torch(args.checkpoint, args.n, args.seed, phrasing=phrasing)
        for key, (right, total) in breakdown(items, result).items():
            print(f"{phrasing:8s} {key:24s} {right:4d}/{total:<4d} {right / total:6.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
