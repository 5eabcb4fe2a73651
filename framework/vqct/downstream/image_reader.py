"""The part every downstream model shares: code features -> LayerNorm -> patches of PATCH x
PATCH grid cells (their features side by side) -> a width, plus a learned position per patch.
Patches of 2 x 2 cut a 16 x 16 grid's 256 image tokens to 64, four times less attention and
MLP work on two CPU cores, and keep every cell's vector (concatenated, not averaged). The first LayerNorm is there because codebooks of different
tokenizers differ in scale by orders of magnitude (a taming VQGAN's codes start within
1/K of zero): without it a small codebook's vectors drown under the positions."""

from __future__ import annotations

import torch
from torch import nn

from vqct.downstream.code_features import CodeFeatures
from vqct.errors import UserError


class ImageReader(nn.Module):
    def __init__(self, features: CodeFeatures, grid: tuple[int, int], width: int, patch: int = 1):
        super().__init__()
        h, w = grid
        if h % patch or w % patch:
            raise UserError(f"patch={patch} does not divide the code grid {h} x {w}; give a divisor")
        self.features, self.grid, self.patch = features, grid, patch
        self.norm = nn.LayerNorm(features.dim)
        self.project = nn.Linear(features.dim * patch * patch, width)
        self.position = nn.Parameter(torch.randn(1, h * w // patch ** 2, width) * 0.02)

    @property
    def positions(self) -> int:
        return self.position.shape[1]

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, h, w, columns) -> (B, h * w / patch^2, width)."""
        (h, w), p = self.grid, self.patch
        x = self.norm(self.features(codes)).reshape(len(codes), h // p, p, w // p, p, -1)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(len(codes), (h // p) * (w // p), -1)
        return self.project(x) + self.position
