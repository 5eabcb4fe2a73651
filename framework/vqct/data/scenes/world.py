"""The scenes world: its vocabulary, and a scene graph sampled from a seed.

A scene is a background and 1 to 5 objects, each a shape class with a colour, a size and a
surface pattern, placed at a centre with a depth (0 is the back). The graph also holds each
object's box and the relations between objects that hold in the picture (left of, right
of, above, below, in front of, inside). Everything the image, the captions, the questions and
the segmentation say comes from this graph.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field

SHAPES = ("circle", "square", "triangle", "diamond", "pentagon", "hexagon", "star", "cross", "ring", "semicircle")
COLOURS = {
    "red": (214, 39, 40),
    "orange": (245, 135, 20),
    "yellow": (240, 215, 35),
    "green": (44, 160, 44),
    "cyan": (30, 200, 210),
    "blue": (31, 80, 210),
    "purple": (140, 70, 190),
    "pink": (240, 120, 190),
    "brown": (140, 86, 50),
    "white": (245, 245, 245),
}
SIZES = {"small": 0.11, "medium": 0.16, "large": 0.23}  # radius, as a fraction of the image side
PATTERNS = ("solid", "striped", "dotted", "checked")
BACKGROUNDS = ("gradient", "noise", "grid")
# Muted tones, far from every object colour, so that a colour word always names an object.
BACKGROUND_TONES = ((96, 96, 100), (70, 84, 96), (118, 108, 92), (84, 98, 80), (60, 60, 66), (128, 124, 128))
RELATIONS = ("left of", "right of", "above", "below", "in front of", "inside")
MAX_OBJECTS = 5
_MARGIN = 0.04  # centres closer than this (fraction of the side) are neither left/right nor above/below


@dataclass
class SceneObject:
    shape: str
    colour: str
    size: str
    pattern: str
    x: float  # centre, fraction of the side (0 left, 1 right)
    y: float  # centre, fraction of the side (0 top, 1 bottom)
    depth: int  # drawing order: higher is in front
    rotation: float = 0.0  # degrees, for shapes that are not round

    @property
    def radius(self) -> float:
        return SIZES[self.size]

    def box(self) -> list[float]:
        """[x0, y0, x1, y1] as fractions of the side."""
        r = self.radius
        return [round(self.x - r, 4), round(self.y - r, 4), round(self.x + r, 4), round(self.y + r, 4)]

    def words(self) -> str:
        return f"{self.size} {self.colour} {self.pattern} {self.shape}"


@dataclass
class Background:
    kind: str  # gradient | noise | grid
    tone: tuple[int, int, int]
    tone2: tuple[int, int, int]
    angle: float = 0.0  # gradient direction, degrees
    seed: int = 0  # noise texture


@dataclass
class SceneGraph:
    objects: list[SceneObject]
    background: Background
    relations: list[dict] = field(default_factory=list)  # {"subject": i, "relation": r, "object": j}

    def to_json(self) -> dict:
        return {"objects": [{**asdict(o), "box": o.box(), "index": i} for i, o in enumerate(self.objects)],
                "background": asdict(self.background), "relations": self.relations}

    @classmethod
    def from_json(cls, data: dict) -> "SceneGraph":
        keys = {f for f in SceneObject.__dataclass_fields__}
        objects = [SceneObject(**{k: v for k, v in o.items() if k in keys}) for o in data["objects"]]
        background = Background(**{**data["background"], "tone": tuple(data["background"]["tone"]),
                                   "tone2": tuple(data["background"]["tone2"])})
        return cls(objects, background, list(data["relations"]))


def compositional_holdout(seed: int = 0, count: int = 10) -> set[tuple[str, str]]:
    """(colour, shape) pairs that only the compositional test split shows: one per shape class
    and one per colour (a Latin-square diagonal, shifted by the seed), so train still sees
    every colour and every shape, just never in these pairs."""
    colours = list(COLOURS)
    shift = seed % len(colours)
    return {(colours[(i + shift) % len(colours)], SHAPES[i]) for i in range(min(count, len(SHAPES)))}


def sample_scene(rng: random.Random, holdout: set[tuple[str, str]], compositional: bool = False) -> SceneGraph:
    """A scene from RNG. Never a (colour, shape) pair in HOLDOUT, except with COMPOSITIONAL,
    where at least one object is one. Within a scene, (colour, shape) pairs are distinct, so
    "the red circle" names one object."""
    count = rng.randint(1, MAX_OBJECTS)
    allowed = [(c, s) for c in COLOURS for s in SHAPES if ((c, s) in holdout) == compositional]
    pairs: list[tuple[str, str]] = []
    if compositional:
        pairs.append(rng.choice(sorted(holdout)))
        allowed = [(c, s) for c in COLOURS for s in SHAPES]
    while len(pairs) < count:
        pair = rng.choice(allowed)
        if pair not in pairs:
            pairs.append(pair)
    rng.shuffle(pairs)
    objects = []
    for depth, (colour, shape) in enumerate(pairs):
        objects.append(_place(rng, colour, shape, depth, objects))
    background = Background(rng.choice(BACKGROUNDS), rng.choice(BACKGROUND_TONES), rng.choice(BACKGROUND_TONES),
                            round(rng.uniform(0, 360), 1), rng.randrange(2**31))
    return SceneGraph(objects, background, relations_of(objects))


def _place(rng: random.Random, colour: str, shape: str, depth: int, placed: list[SceneObject]) -> SceneObject:
    """Somewhere inside the picture. Now and then a small object goes inside a large one
    already placed, so that "inside" occurs; otherwise a few tries keep overlaps partial."""
    size = rng.choice(list(SIZES))
    pattern = rng.choice(PATTERNS)
    rotation = round(rng.uniform(-25, 25), 1) if shape not in ("circle", "ring") else 0.0
    hosts = [o for o in placed if o.size == "large"]
    if size == "small" and hosts and rng.random() < 0.3:
        host = rng.choice(hosts)
        slack = host.radius - SIZES["small"] - 0.02
        return SceneObject(shape, colour, size, pattern, round(host.x + rng.uniform(-slack, slack) * 0.5, 4),
                           round(host.y + rng.uniform(-slack, slack) * 0.5, 4), depth, rotation)
    r = SIZES[size]
    best = None
    for _ in range(8):
        x, y = rng.uniform(r, 1 - r), rng.uniform(r, 1 - r)
        overlap = max((o.radius + r - math.hypot(o.x - x, o.y - y) for o in placed), default=-1.0)
        if best is None or overlap < best[0]:
            best = (overlap, x, y)
        if overlap < 0.5 * r:  # partial overlap at most
            break
    return SceneObject(shape, colour, size, pattern, round(best[1], 4), round(best[2], 4), depth, rotation)


def relations_of(objects: list[SceneObject]) -> list[dict]:
    """Every relation that holds between two objects, from their centres, boxes and depths."""
    out = []
    for i, a in enumerate(objects):
        for j, b in enumerate(objects):
            if i == j:
                continue
            for relation in RELATIONS:
                if holds(a, relation, b):
                    out.append({"subject": i, "relation": relation, "object": j})
    return out


def holds(a: SceneObject, relation: str, b: SceneObject) -> bool:
    """Whether A is RELATION B in the picture."""
    if relation == "left of":
        return a.x < b.x - _MARGIN
    if relation == "right of":
        return a.x > b.x + _MARGIN
    if relation == "above":
        return a.y < b.y - _MARGIN
    if relation == "below":
        return a.y > b.y + _MARGIN
    if relation == "in front of":
        return a.depth > b.depth and math.hypot(a.x - b.x, a.y - b.y) < 0.8 * (a.radius + b.radius)
    if relation == "inside":
        ax0, ay0, ax1, ay1 = a.box()
        bx0, by0, bx1, by1 = b.box()
        return a.depth > b.depth and a.radius < b.radius and bx0 <= ax0 and by0 <= ay0 and ax1 <= bx1 and ay1 <= by1
    raise ValueError(f"unknown relation {relation}")
