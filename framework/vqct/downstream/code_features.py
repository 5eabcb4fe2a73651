"""What a downstream model sees of an image: its codes, as vectors.

`vectors` (the default): the tokenizer's own quantized vectors at each grid position, frozen
(what its decoder reads; a language-aligned codebook differs from a plain one exactly here).
`indices`: a learned embedding per code, summed over a position's columns, which ignores the
codebook's geometry: the control that tells whether the vectors, or only the partition of
images into codes, carry what a task needs.
"""

from __future__ import annotations

import torch
from torch import nn

from vqct.config.downstream import FEATURES


class CodeFeatures(nn.Module):
    """codes (B, h, w, columns) -> features (B, h * w, dim)."""

    def __init__(self, quantizer: nn.Module | None, kind: str, code_counts: list[int]):
        super().__init__()
        if kind not in FEATURES:
            raise ValueError(f"features {kind!r}: one of {FEATURES}")
        self.kind = kind
        if kind == "vectors":
            self.quantizer = quantizer.eval().requires_grad_(False)
            self.dim = quantizer.channels
        else:
            self.quantizer = None
            self.dim = 128
            # one table over every column's codes: column c's code i is row offset[c] + i
            self.register_buffer("offsets", torch.tensor([0] + code_counts[:-1]).cumsum(0), persistent=False)
            self.table = nn.Embedding(sum(code_counts), self.dim)

    def train(self, mode: bool = True) -> "CodeFeatures":
        super().train(mode)
        if self.quantizer is not None:  # frozen: a transfer network's dropout stays off
            self.quantizer.eval()
        return self

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        if self.quantizer is None:
            return self.table(codes + self.offsets).sum(dim=-2).flatten(1, 2)
        with torch.no_grad():
            vectors = self.quantizer.lookup(codes[..., 0] if codes.shape[-1] == 1 else codes)
        return vectors.flatten(2).transpose(1, 2)


def column_code_counts(layout: dict) -> list[int]:
    """A code manifest's layout -> the codebook size of each column (VQCT: k adjectives, 1 noun)."""
    return [size for _, size, columns in layout["groups"] for _ in range(columns)]
