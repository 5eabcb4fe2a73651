"""Streaming code shards (`vqct data tokenize`) for stage 2: the image loader's splitting,
shuffling and skip counting (data/loader.py), with a decoder of codes instead of images.

A batch holds the codes (B, L, columns) in raster order, one caption line per sample (drawn
at random when the sample has several, as the image loader does), the keys, and, when asked
for, the segmentation at the code grid: the most frequent class of each cell's pixels.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from PIL import Image

from vqct.data.decode import BadSample, decode_caption
from vqct.data.loader import ImageCaptionStream, Loader
from vqct.records.code_manifest import CODES_EXT

SEGMENTATION_EXT = "seg.png"


def grid_classes(classes: np.ndarray, grid: int, num_classes: int) -> torch.Tensor:
    """A class map (S, S) -> (grid, grid): each cell's most frequent class (ties: the lowest)."""
    size = classes.shape[0]
    if size % grid or classes.shape != (size, size):
        raise BadSample("bad_segmentation", f"segmentation {classes.shape} does not tile a {grid} x {grid} grid")
    cell = size // grid
    onehot = torch.nn.functional.one_hot(torch.from_numpy(classes.astype(np.int64)), num_classes)
    return onehot.reshape(grid, cell, grid, cell, num_classes).sum(dim=(1, 3)).argmax(dim=-1)


@dataclass
class CodeDecoder:
    """A code-shard sample -> {codes (L, columns), caption, key[, segmentation (grid, grid)]}."""
    height: int
    width: int
    columns: int
    segmentation_classes: int = 0  # > 0: read seg.png too

    def __call__(self, sample: dict, rng: Optional[random.Random]) -> dict:
        key = str(sample.get("__key__", ""))
        if CODES_EXT not in sample:
            raise BadSample("missing_codes", f"no {CODES_EXT} in sample {key}")
        try:
            codes = np.load(io.BytesIO(sample[CODES_EXT]), allow_pickle=False)
        except ValueError as exc:
            raise BadSample("bad_codes", f"{key}: {exc}") from None
        if codes.shape != (self.height, self.width, self.columns):
            raise BadSample("bad_codes", f"{key}: codes {codes.shape}, the set's layout is "
                            f"{(self.height, self.width, self.columns)}")
        out = {"codes": torch.from_numpy(codes.astype(np.int64)).reshape(-1, self.columns), "key": key,
               "caption": decode_caption(sample["txt"]) if "txt" in sample else ""}
        if self.segmentation_classes:
            if SEGMENTATION_EXT not in sample:
                raise BadSample("missing_segmentation", f"no {SEGMENTATION_EXT} in sample {key}")
            classes = np.asarray(Image.open(io.BytesIO(sample[SEGMENTATION_EXT])), dtype=np.uint8)
            out["segmentation"] = grid_classes(classes, self.height, self.segmentation_classes)
        return out


@dataclass
class CodeBatch:
    codes: torch.Tensor  # (B, L, columns)
    captions: list[str]
    keys: list[str]
    reader: int
    segmentation: Optional[torch.Tensor] = None  # (B, h, w)
    skipped: dict = field(default_factory=dict)


def collate_codes(samples: list[dict]) -> CodeBatch:
    seg = [s["segmentation"] for s in samples if "segmentation" in s]
    return CodeBatch(codes=torch.stack([s["codes"] for s in samples]), captions=[s["caption"] for s in samples],
                     keys=[s["key"] for s in samples], reader=samples[-1]["reader"],
                     segmentation=torch.stack(seg) if seg else None, skipped=samples[-1]["skipped"])


def make_code_loader(urls: list[str], decoder: CodeDecoder, batch_size: int, num_workers: int, seed: int,
                     shuffle_buffer: int = 0, epochs: Optional[int] = None, start_epoch: int = 0) -> Loader:
    stream = ImageCaptionStream(urls, image_size=0, seed=seed, shuffle_buffer=shuffle_buffer, epochs=epochs,
                                start_epoch=start_epoch, decoder=decoder)
    return Loader(stream, batch_size, num_workers, collate_fn=collate_codes)
