"""What is said about a scene: captions in varied grammar, and questions with one-word answers.

Captions (at least 3 a scene), COCO-like: one names every object, one only the salient object
(the largest, then the frontmost), one a relation between two objects (or the lone object and
its background), one lists the objects' colours and shapes. Adjectives are colour, size and
pattern words, nouns are shape classes.

Questions (at least 5 a scene), of the COCO-QA and CLEVR kinds: attribute ("what colour is
the striped star?"), count ("how many circles are there?"), existence ("is there a red
square?") and relation ("is the red circle left of the blue star?"). Each carries the
program that answers it from the scene graph, so a reader (and the tests) can check it.
"""

from __future__ import annotations

import random

from vqct.data.scenes.world import COLOURS, SHAPES, SceneGraph, SceneObject

NUMBERS = ("zero", "one", "two", "three", "four", "five")
ATTRIBUTES = ("size", "colour", "pattern", "shape")
_BACKGROUND_WORDS = {"gradient": "a gradient background", "noise": "a mottled background",
                     "grid": "a grid background"}


def _article(phrase: str) -> str:
    return f"an {phrase}" if phrase[0] in "aeiou" else f"a {phrase}"


def phrase(obj: SceneObject, rng: random.Random | None = None, full: bool = False) -> str:
    """The object's noun phrase: colour and shape always; size and pattern always with FULL,
    else each now and then (RNG), as people leave them out."""
    words = []
    if full or (rng and rng.random() < 0.6):
        words.append(obj.size)
    words.append(obj.colour)
    if obj.pattern != "solid" and (full or (rng and rng.random() < 0.6)):
        words.append(obj.pattern)
    words.append(obj.shape)
    return " ".join(words)


def _listing(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def salient(graph: SceneGraph) -> int:
    """The index of the object a viewer notices first: the largest, then the frontmost."""
    order = {"small": 0, "medium": 1, "large": 2}
    return max(range(len(graph.objects)), key=lambda i: (order[graph.objects[i].size], graph.objects[i].depth))


RELATION_LINE = 2  # captions()' line that states a relation between two objects (where one holds)


def captions(graph: SceneGraph, rng: random.Random) -> list[str]:
    objects, where = graph.objects, _BACKGROUND_WORDS[graph.background.kind]
    everything = [_article(phrase(o, rng)) for o in objects]
    if len(objects) > 1 and rng.random() < 0.5:
        every = f"{NUMBERS[len(objects)]} shapes on {where}: {_listing(everything)}"
    else:
        every = f"{_listing(everything)} on {where}"
    main = objects[salient(graph)]
    lone = rng.choice(["a picture of {}", "{} in the picture", "{}"]).format(_article(phrase(main, full=True)))
    if graph.relations:
        triple = rng.choice(graph.relations)
        subject, obj = objects[triple["subject"]], objects[triple["object"]]
        related = f"{_article(phrase(subject, rng))} {triple['relation']} {_article(phrase(obj, rng))}"
    else:
        related = f"{_article(phrase(main, rng))} alone on {where}"
    colours_shapes = _listing([f"{o.colour} {o.shape}" for o in objects])
    return [every, lone, related, f"{'shapes' if len(objects) > 1 else 'a shape'}: {colours_shapes}"]


# ---- questions ---------------------------------------------------------------------------------
def matches(obj: dict | SceneObject, where: dict) -> bool:
    """Whether an object (graph JSON or SceneObject) has every attribute value in WHERE."""
    get = obj.get if isinstance(obj, dict) else (lambda key: getattr(obj, key))
    return all(get(key) == value for key, value in where.items())


def _describe(where: dict) -> str:
    words = [where[a] for a in ("size", "colour", "pattern") if a in where]
    return " ".join([*words, where.get("shape", "object")])


def _referent(objects: list[SceneObject], index: int, leave_out: str | None) -> dict | None:
    """The fewest attributes (not LEAVE_OUT) that pick out OBJECTS[INDEX] alone, or None."""
    target = objects[index]
    candidates = [a for a in ("shape", "colour", "pattern", "size") if a != leave_out]
    for count in range(1, len(candidates) + 1):
        for chosen in _subsets(candidates, count):
            where = {a: getattr(target, a) for a in chosen}
            if sum(matches(o, where) for o in objects) == 1:
                return where
    return None


def _subsets(items: list[str], count: int) -> list[list[str]]:
    if count == 0:
        return [[]]
    return [[items[i], *rest] for i in range(len(items)) for rest in _subsets(items[i + 1:], count - 1)]


def questions(graph: SceneGraph, rng: random.Random) -> list[dict]:
    """At least 5 questions (count, existence, attribute, relation), each with its program."""
    objects = graph.objects
    out = []
    present = rng.choice(objects).shape
    absent = rng.choice([s for s in SHAPES if all(o.shape != s for o in objects)])
    for shape in (present, absent):
        count = sum(o.shape == shape for o in objects)
        out.append({"type": "count", "question": f"how many {shape}s are there?", "answer": NUMBERS[count],
                    "program": {"op": "count", "where": {"shape": shape}}})
    here = rng.choice(objects)
    missing = rng.choice([(c, s) for c in COLOURS for s in SHAPES
                          if not any(o.colour == c and o.shape == s for o in objects)])
    for (colour, shape), answer in (((here.colour, here.shape), "yes"), (missing, "no")):
        out.append({"type": "existence", "question": f"is there {_article(f'{colour} {shape}')}?", "answer": answer,
                    "program": {"op": "exist", "where": {"colour": colour, "shape": shape}}})
    for attribute in ("colour", "shape", "pattern", "size"):
        index = rng.randrange(len(objects))
        where = _referent(objects, index, attribute)
        if where is None:
            continue
        asked = {"colour": "what colour is", "shape": "what shape is", "pattern": "what pattern does",
                 "size": "what size is"}[attribute]
        tail = " have?" if attribute == "pattern" else "?"
        out.append({"type": "attribute", "question": f"{asked} the {_describe(where)}{tail}",
                    "answer": getattr(objects[index], attribute),
                    "program": {"op": "query", "attribute": attribute, "where": where}})
    if graph.relations:  # a relation that holds, and the same one the other way round
        triple = rng.choice(graph.relations)
        relation = triple["relation"]
        for first, second in ((triple["subject"], triple["object"]), (triple["object"], triple["subject"])):
            subject, obj = _referent(objects, first, None), _referent(objects, second, None)
            found = {"subject": first, "relation": relation, "object": second} in graph.relations
            out.append({"type": "relation",
                        "question": f"is the {_describe(subject)} {relation} the {_describe(obj)}?",
                        "answer": "yes" if found else "no",
                        "program": {"op": "relate", "subject": subject, "relation": relation, "object": obj}})
    return out
