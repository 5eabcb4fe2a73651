"""The scene parser: picture -> shape class per pixel (0 background, 1 + the shape's index).

A small U-Net: three downsamplings take a 64 px picture to 8 x 8, where one cell sees the
largest object whole, and the skips bring back the edges. `vqct eval` runs it on
reconstructions to ask whether each object kept its shape; the downstream tasks reuse it as
their judge. Why not a library model: none ships weights for this world, and a torchvision
segmentation network is a hundred times the size this task needs on a CPU.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU())


class SceneParser(nn.Module):
    def __init__(self, num_classes: int = 11, width: int = 32):
        super().__init__()
        self.num_classes, self.width = num_classes, width
        widths = [width, 2 * width, 4 * width, 4 * width]
        self.down = nn.ModuleList([_block(3, widths[0])] + [_block(a, b) for a, b in zip(widths, widths[1:])])
        self.up = nn.ModuleList([_block(b + a, a) for a, b in zip(widths[:-1], widths[1:])][::-1])
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """IMAGES (B, 3, H, W) in [-1, 1], H and W divisible by 8 -> logits (B, classes, H, W)."""
        skips, x = [], images
        for index, block in enumerate(self.down):
            x = block(x if index == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = block(torch.cat([F.interpolate(x, scale_factor=2.0, mode="nearest"), skip], 1))
        return self.head(x)

    def config(self) -> dict:
        return {"num_classes": self.num_classes, "width": self.width}
