"""The judge of scenes made by a generator: what the scene parser and the colour reader see in
each picture, against what the picture was asked for.

- objects: for each object of the scene graph the caption names (the scenes' first caption
  line names every object by colour and shape), whether the picture holds a region the parser
  reads as that shape whose colour (eval/objects.py's reader, on the region's interior) is
  that colour; and, looser, whether it holds that shape at all;
- relations: where the caption states one (the scenes' relation line), whether the picture
  holds both objects and places them so (eval/scene_relations.py);
- segmentation: mIoU of the parser's class map against the asked-for map (semantic synthesis);
- FID in the parser's feature space (its bottleneck, averaged over positions) between real
  held-out scenes and the pictures: labelled `fid_parser`, not to be read as Inception FID.

Run on real held-out scenes against their own truth, the same judge gives its own accuracy:
the ceiling a generator's figures are read against (docs/downstream.md).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from vqct.data.scenes.truth import raw_samples, truth_of
from vqct.eval.fid import InceptionFID
from vqct.eval.objects import colour_of, interior
from vqct.eval.scene_relations import AskedRelation, asked_relation, relation_seen
from vqct.models.scene_parser import SceneParser

MIN_REGION = 6  # pixels: smaller parsed blobs are edge noise at 64 px, not objects


@dataclass
class AskedScene:
    key: str
    picture: np.ndarray  # (S, S, 3) uint8
    classes: np.ndarray  # (S, S) the asked-for class map (0 background, 1 + shape)
    objects: list[tuple[int, int]]  # (shape index, colour index) per object the caption names
    relation: AskedRelation | None = None  # what the caption's relation line asks, if it has one


def asked_scenes(urls: list[str], size: int) -> Iterator[AskedScene]:
    """Each sample of URLS (scenes shards, or sample shards of `vqct generate --out-shards`,
    which keep their condition's truth) with its picture at SIZE."""
    for sample in raw_samples(urls):
        truth = truth_of(sample, size)
        if truth is None or "jpg" not in sample:
            continue
        picture = Image.open(io.BytesIO(sample["jpg"])).convert("RGB")
        if picture.size != (size, size):
            picture = picture.resize((size, size), Image.BICUBIC)
        caption = sample.get("txt", b"").decode("utf-8", errors="replace")
        yield AskedScene(sample["__key__"], np.asarray(picture, np.uint8), truth.classes,
                         list(zip(truth.shapes, truth.colours)), asked_relation(caption))


def regions(parsed: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(shape index, mask) of every connected region of one parsed class of at least MIN_REGION pixels."""
    found = []
    for cls in np.unique(parsed):
        if cls == 0:
            continue
        labelled, count = ndimage.label(parsed == cls)
        found += [(int(cls) - 1, labelled == i) for i in range(1, count + 1) if (labelled == i).sum() >= MIN_REGION]
    return found


def seen_objects(picture: np.ndarray, parsed: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
    """(shape, colour, mask) of every region the parser found, its colour read on its interior."""
    return [(shape, colour_of(picture[interior(mask)]), mask) for shape, mask in regions(parsed)]


def objects_found(picture: np.ndarray, parsed: np.ndarray, asked: list[tuple[int, int]],
                  seen: list | None = None) -> tuple[int, int]:
    """(objects found with their shape and colour, objects found with their shape) of ASKED."""
    pairs = [(shape, colour) for shape, colour, _ in (seen if seen is not None else seen_objects(picture, parsed))]
    both = sum((shape, colour) in pairs for shape, colour in asked)
    shapes = sum(any(s == shape for s, _ in pairs) for shape, _ in asked)
    return both, shapes


class ParserFeatures(torch.nn.Module):
    """The parser's bottleneck averaged over positions: images in [0, 1] -> (B, 4 x width)."""

    def __init__(self, parser: SceneParser):
        super().__init__()
        self.parser = parser

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() * 2 - 1
        for index, block in enumerate(self.parser.down):
            x = block(x if index == 0 else torch.nn.functional.max_pool2d(x, 2))
        return x.mean(dim=(2, 3)).double()


@torch.no_grad()
def judge_scenes(parser: SceneParser, scenes: Iterator[AskedScene], num_classes: int,
                 real: np.ndarray | None = None, batch_size: int = 64, inception: InceptionFID | None = None) -> dict:
    """Object and segmentation scores of SCENES; with REAL pictures (N, S, S, 3) uint8, fid_parser,
    and fid_inception too when INCEPTION is given (its value, or why it was skipped)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    fid = None
    if real is not None:
        fid = FrechetInceptionDistance(feature=ParserFeatures(parser), normalize=True)
        for start in range(0, len(real), batch_size):
            unit = torch.from_numpy(real[start:start + batch_size]).permute(0, 3, 1, 2) / 255.0
            fid.update(unit, real=True)
            if inception is not None:
                inception.add(unit, real=True)
    counts = {"both": 0, "shapes": 0, "objects": 0, "scenes": 0, "relations": 0, "pairs": 0, "held": 0}
    inter, union = np.zeros(num_classes), np.zeros(num_classes)
    batch: list[AskedScene] = []

    def flush() -> None:
        pictures = torch.from_numpy(np.stack([s.picture for s in batch])).permute(0, 3, 1, 2).float()
        parsed = parser(pictures / 127.5 - 1).argmax(1).numpy()
        for scene, classes in zip(batch, parsed):
            seen = seen_objects(scene.picture, classes)
            both, shapes = objects_found(scene.picture, classes, scene.objects, seen)
            counts["both"] += both
            counts["shapes"] += shapes
            counts["objects"] += len(scene.objects)
            if scene.relation is not None:
                pair, held = relation_seen(seen, scene.relation)
                counts["relations"] += 1
                counts["pairs"] += pair
                counts["held"] += held
            for cls in range(num_classes):
                a, b = classes == cls, scene.classes == cls
                inter[cls] += (a & b).sum()
                union[cls] += (a | b).sum()
        counts["scenes"] += len(batch)
        if fid is not None:
            fid.update(pictures / 255.0, real=False)
            if inception is not None:
                inception.add(pictures / 255.0, real=False)
        batch.clear()

    for scene in scenes:
        batch.append(scene)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if not counts["scenes"]:
        return {"scenes": 0}
    present = union > 0
    out = {"scenes": counts["scenes"], "objects": counts["objects"],
           "objects_found": counts["both"] / counts["objects"], "shapes_found": counts["shapes"] / counts["objects"],
           "miou": float((inter[present] / union[present]).mean())}
    if counts["relations"]:  # the captions asked for relations (the relation line)
        out.update(relations_asked=counts["relations"], relation_objects_found=counts["pairs"] / counts["relations"],
                   relations_held=counts["held"] / counts["relations"])
    if fid is not None:
        out["fid_parser"] = float(fid.compute())
        if inception is not None:
            out["fid_inception"] = inception.compute()
    return out
