"""Procedural image-caption scenes written as WebDataset shards (img2dataset layout).

Each sample is `{key}.jpg`, `{key}.txt` (the caption) and `{key}.json` (metadata), the
layout LAION shards made by img2dataset use, so the same loader reads both. Captions
describe the scene compositionally: "a small red circle left of a large blue square".
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from vqct.data.decode import encode_image

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 180),
    "orange": (240, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "diamond")
SIZES = {"small": 0.22, "large": 0.38}  # fraction of the image side
BACKGROUNDS = ((128, 128, 128), (90, 110, 130), (150, 140, 120), (200, 200, 210))
RELATIONS = {"left of": (0, -1), "right of": (0, 1), "above": (1, -1), "below": (1, 1)}
_SUPERSAMPLE = 4  # draw large, then downsample: anti-aliased edges


@dataclass(frozen=True)
class Thing:
    colour: str
    size: str
    shape: str

    def phrase(self) -> str:
        return f"a {self.size} {self.colour} {self.shape}"


def _draw(draw: ImageDraw.ImageDraw, thing: Thing, cx: float, cy: float, side: int) -> None:
    r = SIZES[thing.size] * side / 2
    fill = COLOURS[thing.colour]
    if thing.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif thing.shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif thing.shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)


def _random_thing(rng: random.Random) -> Thing:
    return Thing(rng.choice(list(COLOURS)), rng.choice(list(SIZES)), rng.choice(SHAPES))


def make_scene(rng: random.Random, image_size: int) -> tuple[Image.Image, str, dict]:
    """One scene: one object, or two placed by a spatial relation named in the caption."""
    side = image_size * _SUPERSAMPLE
    background = rng.choice(BACKGROUNDS)
    image = Image.new("RGB", (side, side), background)
    draw = ImageDraw.Draw(image)
    first = _random_thing(rng)
    jitter = lambda: rng.uniform(-0.06, 0.06) * side  # noqa: E731
    if rng.random() < 0.25:
        things = [(first, side / 2 + jitter(), side / 2 + jitter())]
        caption = first.phrase()
        relation = None
    else:
        second = _random_thing(rng)
        while second == first:
            second = _random_thing(rng)
        relation = rng.choice(list(RELATIONS))
        axis, sign = RELATIONS[relation]
        near, far = side * 0.28, side * 0.72
        a, b = (near, far) if sign < 0 else (far, near)
        centre = side / 2
        if axis == 0:
            things = [(first, a + jitter(), centre + jitter()), (second, b + jitter(), centre + jitter())]
        else:
            things = [(first, centre + jitter(), a + jitter()), (second, centre + jitter(), b + jitter())]
        caption = f"{first.phrase()} {relation} {second.phrase()}"
    for thing, cx, cy in things:
        _draw(draw, thing, cx, cy, side)
    image = image.resize((image_size, image_size), Image.LANCZOS)
    meta = {
        "caption": caption,
        "relation": relation,
        "objects": [
            {"colour": t.colour, "size": t.size, "shape": t.shape, "x": round(x / side, 3), "y": round(y / side, 3)}
            for t, x, y in things
        ],
        "background": list(background),
        "width": image_size,
        "height": image_size,
    }
    return image, caption, meta


def write_split(out: Path, split: str, num_samples: int, samples_per_shard: int,
                image_size: int, seed: int, progress=None) -> list[str]:
    """Write one split as `out/split/shapes-NNNNNN.tar`; returns the shard paths."""
    import webdataset as wds

    target = out / split
    target.mkdir(parents=True, exist_ok=True)
    for stale in target.glob("shapes-*.tar"):
        stale.unlink()  # a re-run with other sizes must not leave extra shards behind
    # Python's Random is stable across versions for a given seed: deterministic output.
    rng = random.Random(f"{seed}-{split}")
    pattern = str(target / "shapes-%06d.tar")
    # A fixed mtime in the tar headers: the same seed gives byte-identical shards.
    with wds.ShardWriter(pattern, maxcount=samples_per_shard, verbose=0, mtime=0.0) as sink:
        for index in range(num_samples):
            image, caption, meta = make_scene(rng, image_size)
            key = f"{split}{index:08d}"
            meta.update(key=key, seed=seed, split=split)
            sink.write({"__key__": key, "jpg": encode_image(image), "txt": caption, "json": json.dumps(meta)})
            if progress is not None:
                progress.update(1)
    return sorted(str(p) for p in target.glob("shapes-*.tar"))


def write_shapes(out: str | Path, num_samples: int, samples_per_shard: int, image_size: int,
                 seed: int, val_fraction: float = 0.1) -> dict:
    """Write train and held-out val splits; returns counts and shard lists."""
    from tqdm import tqdm

    out = Path(out)
    num_val = max(1, round(num_samples * val_fraction)) if val_fraction > 0 else 0
    num_train = num_samples - num_val
    with tqdm(total=num_samples, desc="shapes", unit="img", mininterval=1.0) as bar:
        train = write_split(out, "train", num_train, samples_per_shard, image_size, seed, bar)
        val = write_split(out, "val", num_val, samples_per_shard, image_size, seed, bar) if num_val else []
    summary = {
        "out": str(out),
        "train_samples": num_train,
        "val_samples": num_val,
        "train_shards": len(train),
        "val_shards": len(val),
        "image_size": image_size,
        "seed": seed,
    }
    (out / "manifest.json").write_text(json.dumps(summary, indent=2))
    return summary
