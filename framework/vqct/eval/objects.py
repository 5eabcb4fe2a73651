"""Reconstruction as the eye judges it, on sets with ground truth (the scenes world).

Whole-picture PSNR is dominated by a flat background: a circle that comes back in the wrong
colour costs little. With each sample's instance map this measures, over object pixels only,
PSNR and L1, and per object whether it keeps its colour (read from its known visible mask)
and its shape class (read by the scene parser, vqct.models.scene_parser). Each judge is also
run on the original pictures: its own accuracy there is the ceiling the reconstructions are
read against.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional as F

from vqct.data.scenes.truth import SceneTruth
from vqct.data.scenes.world import COLOURS
from vqct.models.scene_parser import SceneParser

_BASE = np.array(list(COLOURS.values()), dtype=np.float32)
# The pattern's second tone, as the renderer draws it (data/scenes/render.py, _surface).
_SHADE = np.where(np.array([[name == "white"] for name in COLOURS]), 170.0, _BASE * 0.55).astype(np.float32)


def interior(mask: np.ndarray) -> np.ndarray:
    """MASK's pixels whose four neighbours are in it too (anti-aliased edges mix colours);
    MASK itself when fewer than 3 remain."""
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return inner if inner.sum() >= 3 else mask


# A surface is a mixture of its colour's two tones (the pattern; blur mixes them further), so
# a colour is read by the distance (RGB, 0..255) to the segment between its tones, and only
# within MAX_TONE_DISTANCE: the nearest two colours' segments (orange's and brown's) are 35
# apart, and a black or washed-out surface is nobody's colour.
MAX_TONE_DISTANCE = 35.0


def _segment_distance(pixels: np.ndarray) -> np.ndarray:
    """(M, colours): each pixel's distance to each colour's segment [shade, base]."""
    span = _BASE - _SHADE
    t = np.clip(((pixels[:, None, :] - _SHADE[None]) * span[None]).sum(-1) / (span * span).sum(-1), 0.0, 1.0)
    return np.linalg.norm(pixels[:, None, :] - (_SHADE[None] + t[..., None] * span[None]), axis=-1)


def colour_of(pixels: np.ndarray) -> int:
    """The palette colour (index into COLOURS) PIXELS (M, 3) in 0..255 show, or -1 for none:
    the colour whose tone segment is nearest in the median over pixels, if within
    MAX_TONE_DISTANCE."""
    distance = np.median(_segment_distance(pixels.astype(np.float32)), axis=0)
    best = int(np.argmin(distance))
    return best if distance[best] <= MAX_TONE_DISTANCE else -1


def load_parser(path: str, device) -> tuple[SceneParser, dict]:
    """The parser saved by `vqct parser` and what it recorded (its accuracy, its image size)."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    parser = SceneParser(**saved["config"])
    parser.load_state_dict(saved["state_dict"])
    return parser.to(device).eval(), saved.get("record", {})


@torch.no_grad()
def parsed_shapes(parser: SceneParser, images: torch.Tensor, instances: torch.Tensor, counts: list[int]) -> list[list[int]]:
    """Per picture, per object, the shape class the parser reads inside the object's visible
    mask (-1 when nothing of it is visible): the most probable non-background class summed
    over the mask. IMAGES (B, 3, H, W) in [-1, 1]; INSTANCES (B, H, W)."""
    probs = F.softmax(parser(images).float(), dim=1)[:, 1:]  # (B, shapes, H, W)
    out = []
    for b, count in enumerate(counts):
        masks = instances[b][None] == torch.arange(1, count + 1, device=instances.device)[:, None, None]
        scores = torch.einsum("khw,chw->kc", masks.float(), probs[b])
        visible = masks.flatten(1).any(1)
        out.append([int(i) if v else -1 for i, v in zip(scores.argmax(1).tolist(), visible.tolist())])
    return out


class ObjectMetrics:
    """Accumulates object-pixel errors and kept colours/shapes over batches with ground truth."""

    def __init__(self, truth: dict[str, SceneTruth], parser: SceneParser | None = None):
        self.truth, self.parser = truth, parser
        self.se = self.ae = 0.0
        self.values = 0
        self.kept = {"colour": [0, 0], "colour_original": [0, 0], "shape": [0, 0], "shape_original": [0, 0]}
        self.scenes = 0

    def update(self, keys: list[str], images: torch.Tensor, recon: torch.Tensor) -> None:
        """IMAGES and RECON (B, 3, H, W) in [-1, 1]; samples without ground truth are passed over."""
        rows = [(i, self.truth[k]) for i, k in enumerate(keys) if k in self.truth]
        if not rows:
            return
        index = torch.tensor([i for i, _ in rows])
        images, recon = images[index].float().cpu(), recon[index].float().cpu().clamp(-1, 1)
        instances = torch.from_numpy(np.stack([t.instances for _, t in rows])).long()
        self._pixels(images, recon, instances > 0)
        self._colours(images, recon, [t for _, t in rows])
        if self.parser is not None:
            self._shapes(images, recon, instances, [t for _, t in rows])
        self.scenes += len(rows)

    def _pixels(self, images, recon, on_object) -> None:
        diff = (recon - images)[on_object[:, None].expand_as(images)] / 2.0  # on the [0, 1] scale
        self.se += float((diff ** 2).sum())
        self.ae += float(diff.abs().sum())
        self.values += diff.numel()

    def _colours(self, images, recon, truths: list[SceneTruth]) -> None:
        originals = ((images.permute(0, 2, 3, 1) + 1) * 127.5).numpy()
        decoded = ((recon.permute(0, 2, 3, 1) + 1) * 127.5).numpy()
        for b, truth in enumerate(truths):
            for o, colour in enumerate(truth.colours):
                mask = truth.instances == o + 1
                if not mask.any():
                    continue
                inner = interior(mask)
                for name, pictures in (("colour", decoded), ("colour_original", originals)):
                    self.kept[name][0] += colour_of(pictures[b][inner]) == colour
                    self.kept[name][1] += 1

    def _shapes(self, images, recon, instances, truths: list[SceneTruth]) -> None:
        device = next(self.parser.parameters()).device
        counts = [len(t.shapes) for t in truths]
        for name, pictures in (("shape", recon), ("shape_original", images)):
            read = parsed_shapes(self.parser, pictures.to(device), instances.to(device), counts)
            for truth, shapes in zip(truths, read):
                for true, seen in zip(truth.shapes, shapes):
                    if seen >= 0:
                        self.kept[name][0] += seen == true
                        self.kept[name][1] += 1

    def results(self) -> dict:
        if not self.scenes:
            return {}
        mse = self.se / max(self.values, 1)
        out = {"object_scenes": self.scenes, "object_psnr": 10 * math.log10(1.0 / mse) if mse > 0 else float("inf"),
               "object_l1": 2.0 * self.ae / max(self.values, 1)}  # L1 on [-1, 1], as `l1`
        # On the reconstructions: kept; on the originals: the judge's own accuracy.
        names = {"colour": "colour_kept", "colour_original": "colour_judge_accuracy",
                 "shape": "shape_kept", "shape_original": "shape_judge_accuracy"}
        for name, (hits, total) in self.kept.items():
            out[names[name]] = hits / total if total else None
        out["objects"] = self.kept["colour"][1]
        return out
