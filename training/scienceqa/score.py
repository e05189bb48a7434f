"""The paper's ScienceQA table: accuracy by subject, context modality and grade, and overall.

Contract: `CATEGORIES` is the table of columns (name → predicate on a `Problem`), with the definitions of the
ScienceQA authors' scorer (lupantech/ScienceQA `tools/evaluate_acc.py`):
NAT/SOC/LAN = subject natural/social/language science; TXT = the problem has a non-empty hint (text context);
IMG = it has an image; NO = neither; G1-6 = grade1..grade6; G7-12 = grade7..grade12; Avg = every problem.
TXT and IMG overlap (a problem with both counts in both), so the modality columns do not sum to the total.
`tally(problems, predicted)` → {column: (correct, total)} for one system's predicted indices (pid → index);
`table(rows)` formats {system: tally} as the paper's table (percent, two decimals; "-" for an empty column).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from .release import Problem

_G1_6 = {f"grade{i}" for i in range(1, 7)}
_G7_12 = {f"grade{i}" for i in range(7, 13)}

CATEGORIES: dict[str, Callable[[Problem], bool]] = {
    "NAT": lambda p: p.subject == "natural science",
    "SOC": lambda p: p.subject == "social science",
    "LAN": lambda p: p.subject == "language science",
    "TXT": lambda p: bool(p.hint),
    "IMG": lambda p: bool(p.image),
    "NO": lambda p: not p.hint and not p.image,
    "G1-6": lambda p: p.grade in _G1_6,
    "G7-12": lambda p: p.grade in _G7_12,
    "Avg": lambda p: True,
}

Tally = dict[str, tuple[int, int]]


def tally(problems: Iterable[Problem], predicted: Mapping[str, int]) -> Tally:
    """(correct, total) per column over the problems that have a prediction."""
    counts = {c: [0, 0] for c in CATEGORIES}
    for p in problems:
        if p.pid not in predicted:
            continue
        right = predicted[p.pid] == p.answer
        for name, member in CATEGORIES.items():
            if member(p):
                counts[name][0] += int(right)
                counts[name][1] += 1
    return {c: (n[0], n[1]) for c, n in counts.items()}


def accuracy(t: Tally) -> dict[str, float | None]:
    """Percentages (None for an empty column)."""
    return {c: (100.0 * k / n if n else None) for c, (k, n) in t.items()}


def table(rows: Mapping[str, Tally]) -> str:
    width = max([len("Method"), *(len(r) for r in rows)])
    head = f"{'Method':<{width}}" + "".join(f"{c:>8}" for c in CATEGORIES)
    lines = [head, "-" * len(head)]
    for name, t in rows.items():
        acc = accuracy(t)
        lines.append(f"{name:<{width}}" + "".join("       -" if acc[c] is None else f"{acc[c]:>8.2f}"
                                                  for c in CATEGORIES))
    sizes = next(iter(rows.values())) if rows else {}
    lines.append(f"{'questions':<{width}}" + "".join(f"{sizes[c][1]:>8}" for c in sizes))
    return "\n".join(lines)
