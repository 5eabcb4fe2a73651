"""The relation a caption asks for ("a large red circle left of a blue star", the scenes'
relation line), and whether a picture shows it, from the regions the scene parser finds.

The caption is read with the scenes' own vocabulary: the relation phrase splits the line, and
each side names one object by its colour and shape word (always there; size and pattern words
come and go). On the picture, the objects are the parsed regions of that shape whose interior
reads that colour; the relation holds when some subject region and object region satisfy it:
left of, right of, above and below by the centres of the visible regions with the margin the
scenes themselves use (data/scenes/world.py's `holds`), inside by the subject's box lying in
the object's. "in front of" is about depth, which a class map does not show: not judged; nor
is a relation between two objects of one shape and colour (the line tells them apart by size
or pattern only).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from vqct.data.scenes.world import COLOURS, RELATIONS, SHAPES, holds

JUDGED = ("left of", "right of", "above", "below", "inside")
_COLOUR_WORDS = list(COLOURS)


@dataclass(frozen=True)
class AskedRelation:
    subject: tuple[int, int]  # (shape index, colour index)
    relation: str
    object: tuple[int, int]


def asked_relation(caption: str) -> AskedRelation | None:
    """The judgeable relation the first caption line that states one asks for, or None."""
    for line in caption.lower().splitlines():
        for relation in RELATIONS:
            head, found, tail = line.partition(f" {relation} ")
            subject, obj = _named(head), _named(tail)
            if found and subject and obj:
                # two objects told apart only by size or pattern, which the judge does not read
                judged = relation in JUDGED and subject != obj
                return AskedRelation(subject, relation, obj) if judged else None
    return None


def _named(words: str) -> tuple[int, int] | None:
    tokens = words.split()
    colour = next((_COLOUR_WORDS.index(t) for t in tokens if t in COLOURS), None)
    shape = next((SHAPES.index(t) for t in tokens if t in SHAPES), None)
    return None if colour is None or shape is None else (shape, colour)


def relation_seen(seen: list[tuple[int, int, np.ndarray]], asked: AskedRelation) -> tuple[bool, bool]:
    """SEEN: (shape, colour, mask) of every parsed region. (both objects found, the relation
    holds between some subject region and some other object region)."""
    subjects = [mask for shape, colour, mask in seen if (shape, colour) == asked.subject]
    objects = [mask for shape, colour, mask in seen if (shape, colour) == asked.object]
    if not subjects or not objects:
        return False, False
    return True, any(_holds(a, asked.relation, b) for a in subjects for b in objects if a is not b)


def _holds(subject: np.ndarray, relation: str, obj: np.ndarray) -> bool:
    if relation == "inside":
        (sy0, sx0), (sy1, sx1) = _box(subject)
        (oy0, ox0), (oy1, ox1) = _box(obj)
        return oy0 <= sy0 and ox0 <= sx0 and sy1 <= oy1 and sx1 <= ox1
    return holds(_centre(subject), relation, _centre(obj))


def _centre(mask: np.ndarray) -> SimpleNamespace:
    """The region's centre as the scenes place objects: x and y as fractions of the side."""
    rows, cols = np.nonzero(mask)
    return SimpleNamespace(x=cols.mean() / mask.shape[1], y=rows.mean() / mask.shape[0])


def _box(mask: np.ndarray) -> tuple[tuple[int, int], tuple[int, int]]:
    rows, cols = np.nonzero(mask)
    return (rows.min(), cols.min()), (rows.max(), cols.max())
