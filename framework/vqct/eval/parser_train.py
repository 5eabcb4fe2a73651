"""`vqct parser`: train the scene parser on the scenes' ground truth and measure it on held-out
scenes (pixel accuracy, mIoU, and per object the shape class read inside its visible mask,
which is how `vqct eval` uses it). The file it writes records those figures beside the weights.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from vqct.data.scenes.render import CLASS_NAMES
from vqct.data.scenes.truth import read_scenes
from vqct.errors import UserError
from vqct.eval.objects import parsed_shapes
from vqct.models.scene_parser import SceneParser


def _tensors(pictures: np.ndarray, truths) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    images = torch.from_numpy(pictures).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    classes = torch.from_numpy(np.stack([t.classes for t in truths])).long()
    instances = torch.from_numpy(np.stack([t.instances for t in truths])).long()
    return images, classes, instances


def degrade(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Half of the batch blurred (down by 2, back up) with a little noise: the parser judges
    reconstructions, which are softer than the pictures it learns from."""
    soft = F.interpolate(F.avg_pool2d(images, 2), scale_factor=2.0, mode="bilinear", align_corners=False)
    soft = soft + 0.03 * torch.randn(soft.shape, generator=generator)
    pick = torch.rand(len(images), generator=generator) < 0.5
    return torch.where(pick[:, None, None, None], soft, images)


@torch.no_grad()
def measure(parser: SceneParser, images, classes, instances, truths, batch_size: int = 128) -> dict:
    """Pixel accuracy, mIoU over the classes present, and per-object shape accuracy."""
    parser.eval()
    k = parser.num_classes
    confusion = torch.zeros(k, k, dtype=torch.long)
    hits = total = 0
    for start in range(0, len(images), batch_size):
        part = slice(start, start + batch_size)
        predicted = parser(images[part]).argmax(1)
        confusion += torch.bincount(classes[part].flatten() * k + predicted.flatten(), minlength=k * k).view(k, k)
        read = parsed_shapes(parser, images[part], instances[part], [len(t.shapes) for t in truths[part]])
        for truth, shapes in zip(truths[part], read):
            for true, seen in zip(truth.shapes, shapes):
                if seen >= 0:
                    hits, total = hits + (seen == true), total + 1
    union = confusion.sum(0) + confusion.sum(1) - confusion.diag()
    present = union > 0
    return {"pixel_accuracy": float(confusion.diag().sum() / confusion.sum()),
            "miou": float((confusion.diag()[present] / union[present]).mean()),
            "object_shape_accuracy": hits / total if total else None, "objects": total, "scenes": len(images)}


def train_parser(train_urls: list[str], val_urls: list[str], out: str, image_size: int = 64, steps: int = 1500,
                 batch_size: int = 32, lr: float = 2e-3, width: int = 32, limit: int = 8000, seed: int = 0) -> dict:
    from tqdm import tqdm

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    pictures, truths = read_scenes(train_urls, image_size, limit)
    if not truths:
        raise UserError("--data holds no scene with ground truth (seg.png, inst.png, json): give vqct data scenes shards")
    val_pictures, val_truths = read_scenes(val_urls, image_size)
    if not val_truths:
        raise UserError("--val holds no scene with ground truth: give held-out vqct data scenes shards")
    images, classes, _ = _tensors(pictures, truths)
    parser = SceneParser(len(CLASS_NAMES), width)
    optimizer = torch.optim.AdamW(parser.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps, pct_start=0.05)
    started = time.time()
    with tqdm(range(steps), desc="parser", unit="step", file=sys.stderr, mininterval=2.0) as bar:
        for _ in bar:
            pick = torch.randint(len(images), (batch_size,), generator=generator)
            loss = F.cross_entropy(parser(degrade(images[pick], generator)), classes[pick])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    val_images, val_classes, val_instances = _tensors(val_pictures, val_truths)
    record = {"image_size": image_size, "train_scenes": len(truths), "steps": steps, "seconds": time.time() - started,
              "held_out": measure(parser, val_images, val_classes, val_instances, val_truths),
              "held_out_degraded": measure(parser, degrade(val_images, torch.Generator().manual_seed(seed + 1)),
                                           val_classes, val_instances, val_truths)}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": parser.config(), "state_dict": parser.state_dict(), "record": record}, out)
    return {"parser": out, **record}
