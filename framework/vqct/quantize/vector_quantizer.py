"""The VQ-VAE / VQGAN vector quantizer: nearest code, straight-through gradient.

legacy_beta=True (the default, quantizer.legacy_beta): loss = beta * ||sg[z] - z_q||^2 +
||z - sg[z_q]||^2, taming's legacy form that taming, VQCT and LG-VQ train with (the encoder's
commitment 4x the codebook pull at beta 0.25). False: the VQ-VAE paper's form,
||sg[z] - z_q||^2 + beta * ||z - sg[z_q]||^2. docs/methods.md cites the official lines.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqct_kernels import nearest_code
from vqct.quantize.usage import ReportsUsage


def vq_loss(zq: torch.Tensor, z: torch.Tensor, beta: float, legacy_beta: bool = True) -> torch.Tensor:
    """Codebook term ||sg[z] - z_q||^2 plus commitment ||z - sg[z_q]||^2, beta on one of them."""
    codebook_term = F.mse_loss(zq.float(), z.detach().float())
    commit_term = F.mse_loss(z.float(), zq.detach().float())
    if legacy_beta:
        return beta * codebook_term + commit_term
    return codebook_term + beta * commit_term


class VectorQuantizer(ReportsUsage, nn.Module):
    def __init__(self, codebook_size: int, dim: int, beta: float = 0.25,
                 legacy_beta: bool = True, lookup_memory_mb: float = 256.0):
        super().__init__()
        self.codebook_size = codebook_size
        self.dim = dim
        self.beta = beta
        self.legacy_beta = legacy_beta
        self.lookup_memory_mb = lookup_memory_mb
        self.channels = dim
        # A direct parameter, not an nn.Embedding: under ZeRO-3 a module's own parameters are
        # gathered for its forward, a child's only for the child's forward.
        bound = 1.0 / codebook_size
        self.codebook = nn.Parameter(torch.empty(codebook_size, dim).uniform_(-bound, bound))

    def forward(self, z: torch.Tensor, with_codes: bool = False):
        """z (B, D, H, W) -> (z_q with straight-through gradient, loss, indices (B, H, W)), and with
        WITH_CODES the chosen code vectors (B, D, H, W), whose gradient reaches the codebook."""
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        idx, _ = nearest_code(flat.detach(), self.codebook.detach(), self.lookup_memory_mb)
        codes = F.embedding(idx, self.codebook).to(flat.dtype)
        loss = vq_loss(codes, flat, self.beta, self.legacy_beta)
        zq = flat + (codes - flat).detach()  # straight-through: d z_q / d z = identity
        zq = zq.reshape(b, h, w, d).permute(0, 3, 1, 2).contiguous()
        if with_codes:
            return zq, loss, idx.reshape(b, h, w), codes.reshape(b, h, w, d).permute(0, 3, 1, 2)
        return zq, loss, idx.reshape(b, h, w)

    @property
    def groups(self) -> dict[str, int]:
        return {"codes": self.codebook_size}

    def code_counts(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"codes": torch.bincount(indices.reshape(-1), minlength=self.codebook_size)}

    def pair_stats(self, indices: torch.Tensor) -> dict[str, float]:
        return {}

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices (B, H, W) -> code vectors (B, D, H, W)."""
        return F.embedding(indices, self.codebook).permute(0, 3, 1, 2).contiguous()
