"""The synthetic visual world: deterministic scenes of simple shapes.

Contract: `make_scene(seed, index)` returns the same `Scene` for the same (seed, index) on every machine,
independent of how many other scenes are made. A scene is a 3×3 grid with at most one object per cell;
each object has a shape, a colour, a size and a jittered centre inside its cell. The grid makes every
fact crisp: "top left" is a cell, "to the left of" means a smaller column, so the teacher, the checker
and the evaluation never disagree about borderline positions.

Coordinates are normalised to [0, 1] (x to the right, y down). `Scene.boxes()` gives COCO-style category
names ("red circle") with normalised [x1, y1, x2, y2] boxes, and `scene_from_boxes` inverts it, so any
record carrying those boxes (COCO annotations, JSONL) can be turned back into a scene for the teacher
and the checker.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
# name → RGB; chosen to stay distinct after resizing to a few dozen pixels.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 38, 38),
    "green": (34, 160, 64),
    "blue": (37, 84, 226),
    "yellow": (240, 208, 32),
    "purple": (140, 58, 184),
    "orange": (245, 130, 20),
}
BACKGROUND = "gray"
BACKGROUND_RGB = (150, 150, 150)
# half-extent of the object's box, as a fraction of the image side (a cell is 1/3 wide).
SIZES: dict[str, float] = {"small": 0.075, "large": 0.14}
SIZE_SPLIT = (SIZES["small"] + SIZES["large"]) / 2  # boxes wider than 2×this are "large"

# (row, col) → the region phrase the teacher writes and the checker reads.
REGIONS: dict[tuple[int, int], str] = {
    (0, 0): "top left", (0, 1): "top", (0, 2): "top right",
    (1, 0): "left", (1, 1): "center", (1, 2): "right",
    (2, 0): "bottom left", (2, 1): "bottom", (2, 2): "bottom right",
}
CELL_OF_REGION: dict[str, tuple[int, int]] = {v: k for k, v in REGIONS.items()}
CELL_OF_REGION["middle"] = (1, 1)

NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass(frozen=True)
class WorldConfig:
    """How scenes are drawn. Defaults suit a small demo model."""

    min_objects: int = 1
    max_objects: int = 5  # at most 9 (one per cell)
    repeat_p: float = 0.45  # chance an object copies a previous object's shape or colour, so counts > 1 occur

    def __post_init__(self) -> None:
        if not 1 <= self.min_objects <= self.max_objects <= 9:
            raise ValueError(f"need 1 <= min_objects <= max_objects <= 9, got {self.min_objects}..{self.max_objects}")


@dataclass(frozen=True)
class Obj:
    """One shape. `cx, cy, r` are normalised; the box is [cx-r, cy-r, cx+r, cy+r]."""

    shape: str
    colour: str
    size: str
    row: int
    col: int
    cx: float
    cy: float
    r: float

    @property
    def region(self) -> str:
        return REGIONS[(self.row, self.col)]

    @property
    def box(self) -> tuple[float, float, float, float]:
        c, r = (self.cx, self.cy), self.r
        return (round(c[0] - r, 3), round(c[1] - r, 3), round(c[0] + r, 3), round(c[1] + r, 3))

    @property
    def category(self) -> str:
        return f"{self.colour} {self.shape}"

    def phrase(self) -> str:
        return f"{self.size} {self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """A set of objects on a plain background; `key` names the scene (e.g. "s000042")."""

    key: str
    objects: tuple[Obj, ...]

    def boxes(self) -> list[dict]:
        """COCO-style annotations: category name + normalised [x1, y1, x2, y2]."""
        return [{"category": o.category, "bbox": list(o.box)} for o in self.objects]

    def matching(self, shape: str | None = None, colour: str | None = None, size: str | None = None,
                 cell: tuple[int, int] | None = None) -> list[Obj]:
        """Objects matching every given attribute (None = any)."""
        return [
            o for o in self.objects
            if (shape is None or o.shape == shape) and (colour is None or o.colour == colour)
            and (size is None or o.size == size) and (cell is None or (o.row, o.col) == cell)
        ]


def make_scene(seed: int, index: int, config: WorldConfig = WorldConfig()) -> Scene:
    """The scene number `index` of world `seed`; deterministic and independent of other indices."""
    # str seeds hash with SHA-512 inside random.Random: stable across processes, unlike hash().
    rng = random.Random(f"llava-local-world:{seed}:{index}")
    n = rng.randint(config.min_objects, config.max_objects)
    cells = rng.sample(sorted(REGIONS), n)
    objects: list[Obj] = []
    for row, col in sorted(cells):
        shape, colour = rng.choice(SHAPES), rng.choice(tuple(COLOURS))
        if objects and rng.random() < config.repeat_p:
            prev = rng.choice(objects)
            if rng.random() < 0.5:
                shape = prev.shape
            else:
                colour = prev.colour
        size = rng.choice(tuple(SIZES))
        r = SIZES[size]
        # keep the box inside its cell with ≥ 0.01 spare, so neighbouring boxes never touch.
        jitter = max(0.0, 1 / 6 - r - 0.01)
        cx = round((col + 0.5) / 3 + rng.uniform(-jitter, jitter), 3)
        cy = round((row + 0.5) / 3 + rng.uniform(-jitter, jitter), 3)
        objects.append(Obj(shape, colour, size, row, col, cx, cy, r))
    return Scene(key=f"s{index:06d}", objects=tuple(objects))


def scene_from_boxes(key: str, boxes: Iterable[dict]) -> Scene | None:
    """Rebuild a scene from "colour shape" boxes (normalised xyxy); None if a box is not from this world."""
    objects = []
    for b in boxes:
        words = str(b.get("category", "")).split()
        if len(words) != 2 or words[0] not in COLOURS or words[1] not in SHAPES:
            return None
        x1, y1, x2, y2 = (float(v) for v in b["bbox"])
        cx, cy, r = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2
        if not (0.0 <= cx <= 1.0 and 0.0 <= cy <= 1.0):
            return None
        size = "large" if r > SIZE_SPLIT else "small"
        row, col = min(int(cy * 3), 2), min(int(cx * 3), 2)
        objects.append(Obj(words[1], words[0], size, row, col, round(cx, 3), round(cy, 3), SIZES[size]))
    if not objects or len({(o.row, o.col) for o in objects}) != len(objects):
        return None
    return Scene(key=key, objects=tuple(sorted(objects, key=lambda o: (o.row, o.col))))


def number_word(n: int) -> str:
    """0 → "no", 3 → "three"; digits beyond nine."""
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def plural(noun: str, n: int) -> str:
    return noun if n == 1 else noun + "s"


def unique_reference(scene: Scene, obj: Obj) -> str | None:
    """The shortest noun phrase naming only `obj` ("circle", "red circle", "small red circle"), or None."""
    for attrs in (("shape",), ("colour", "shape"), ("size", "colour", "shape")):
        kw = {a: getattr(obj, a) for a in attrs}
        if len(scene.matching(**kw)) == 1:
            return " ".join(kw[a] for a in ("size", "colour", "shape") if a in kw)
    return None


def referable(scene: Scene) -> list[tuple[Obj, str]]:
    """Objects that a unique noun phrase can name, with that phrase."""
    out = []
    for o in scene.objects:
        ref = unique_reference(scene, o)
        if ref is not None:
            out.append((o, ref))
    return out


def reading_order(objects: Sequence[Obj]) -> list[Obj]:
    return sorted(objects, key=lambda o: (o.row, o.col))
