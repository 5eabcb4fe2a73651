"""Reconstruction grids a person can read: originals over reconstructions, each tile
upscaled (nearest, so no detail is invented) to at least 128 pixels, rows labelled."""

from __future__ import annotations

import math

import torch
from PIL import Image, ImageDraw, ImageFont

MIN_TILE = 128
_GAP = 4


def _tiles(images: torch.Tensor, scale: int) -> list[Image.Image]:
    """IMAGES in [0, 1], (B, 3, H, W) -> PIL tiles SCALE times larger."""
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(p).resize((p.shape[1] * scale, p.shape[0] * scale), Image.NEAREST) for p in pixels]


def reconstruction_grid(originals: torch.Tensor, reconstructions: torch.Tensor, min_tile: int = MIN_TILE,
                        labels: tuple[str, str] = ("original", "reconstruction")) -> Image.Image:
    """Two rows of tiles, both inputs in [0, 1] and of one shape (B, 3, H, W)."""
    scale = max(1, math.ceil(min_tile / originals.shape[-1]))
    rows = [_tiles(originals, scale), _tiles(reconstructions, scale)]
    tile_w, tile_h = rows[0][0].size
    font = ImageFont.load_default(size=max(14, tile_h // 8))
    label_w = max(int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(text, font=font)) for text in labels) + 16
    grid = Image.new("RGB", (label_w + len(rows[0]) * (tile_w + _GAP), len(rows) * (tile_h + _GAP)), "white")
    draw = ImageDraw.Draw(grid)
    for r, (row, label) in enumerate(zip(rows, labels)):
        top = r * (tile_h + _GAP)
        draw.text((8, top + tile_h // 2), label, fill="black", font=font, anchor="lm")
        for c, tile in enumerate(row):
            grid.paste(tile, (label_w + c * (tile_w + _GAP), top))
    return grid
