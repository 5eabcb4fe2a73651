"""The scenes' ground truth read back from their shards: per sample, the picture, its class and
instance maps, and its objects' shape and colour (what `vqct eval` and the scene parser need).

Maps are resized with nearest neighbours to the size the images are read at, so that a map's
pixel still names one object (scenes are square: no crop is involved).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from PIL import Image

from vqct.data.scenes.world import COLOURS, SHAPES

TRUTH_MEMBERS = ("inst.png", "seg.png", "json")


@dataclass
class SceneTruth:
    classes: np.ndarray  # (H, W) uint8: 0 background, 1 + shape index
    instances: np.ndarray  # (H, W) uint8: 0 background, 1 + object index
    shapes: list[int]  # per object, its index in SHAPES
    colours: list[int]  # per object, its index in COLOURS


def read_maps(sample: dict) -> tuple[np.ndarray, np.ndarray]:
    """(classes, instances) of a raw sample from the shards, as uint8 arrays."""
    return tuple(np.asarray(Image.open(io.BytesIO(sample[ext])), dtype=np.uint8) for ext in ("seg.png", "inst.png"))


def _at_size(array: np.ndarray, size: int) -> np.ndarray:
    if array.shape == (size, size):
        return array
    return np.asarray(Image.fromarray(array).resize((size, size), Image.NEAREST), dtype=np.uint8)


def truth_of(sample: dict, size: int) -> SceneTruth | None:
    """SAMPLE's ground truth at SIZE pixels, or None when the sample carries none."""
    if not all(member in sample for member in TRUTH_MEMBERS):
        return None
    objects = json.loads(sample["json"])["scene"]["objects"]
    colours = list(COLOURS)
    classes, instances = (_at_size(a, size) for a in read_maps(sample))
    return SceneTruth(classes, instances, [SHAPES.index(o["shape"]) for o in objects],
                      [colours.index(o["colour"]) for o in objects])


def raw_samples(urls: list[str]) -> Iterator[dict]:
    """Every sample of URLS as webdataset gives it (member name -> bytes), in shard order."""
    import webdataset as wds

    yield from wds.DataPipeline(wds.SimpleShardList(list(urls)), wds.tarfile_to_samples())


def read_truth(urls: list[str], size: int) -> dict[str, SceneTruth]:
    """Ground truth by sample key, for the samples of URLS that carry it (none: empty)."""
    found = {}
    for sample in raw_samples(urls):
        truth = truth_of(sample, size)
        if truth is None:
            return {}  # not a scenes set: the first sample tells
        found[sample["__key__"]] = truth
    return found


def read_scenes(urls: list[str], size: int, limit: int | None = None) -> tuple[np.ndarray, list[SceneTruth]]:
    """Up to LIMIT scenes of URLS: pictures (N, H, W, 3) uint8 and their ground truth."""
    pictures, truths = [], []
    for sample in raw_samples(urls):
        truth = truth_of(sample, size)
        if truth is None:
            continue
        picture = Image.open(io.BytesIO(sample["jpg"])).convert("RGB")
        if picture.size != (size, size):
            picture = picture.resize((size, size), Image.BICUBIC)
        pictures.append(np.asarray(picture, dtype=np.uint8))
        truths.append(truth)
        if limit is not None and len(pictures) >= limit:
            break
    return (np.stack(pictures) if pictures else np.zeros((0, size, size, 3), np.uint8)), truths
