"""The VQ-VAE / VQGAN vector quantizer: nearest code, straight-through gradient.

loss = ||sg[z] - z_q||^2 + beta * ||z - sg[z_q]||^2  (codebook + beta x commitment, the
VQ-VAE paper's form). `legacy_beta=True` puts beta on the codebook term instead, as
taming-transformers' legacy default does; docs/methods.md records the choice.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqct.kernels import nearest_code
from vqct.quantize.usage import ReportsUsage


def vq_loss(zq: torch.Tensor, z: torch.Tensor, beta: float, legacy_beta: bool = False) -> torch.Tensor:
    """Codebook term ||sg[z] - z_q||^2 plus commitment ||z - sg[z_q]||^2, beta on one of them."""
    codebook_term = F.mse_loss(zq.float(), z.detach().float())
    commit_term = F.mse_loss(z.float(), zq.detach().float())
    if legacy_beta:
        return beta * codebook_term + commit_term
    return codebook_term + beta * commit_term


class VectorQuantizer(ReportsUsage, nn.Module):
    def __init__(self, codebook_size: int, dim: int, beta: float = 0.25,
                 legacy_beta: bool = False, lookup_memory_mb: float = 256.0):
        super().__init__()
        self.codebook_size = codebook_size
        self.dim = dim
        self.beta = beta
        self.legacy_beta = legacy_beta
        self.lookup_memory_mb = lookup_memory_mb
        self.channels = dim
        # A direct parameter, not an nn.Embedding: under ZeRO-3 a module's own parameters are
        # gathered for its forward, a child's only for the child's forward.
        self.codebook = nn.Parameter(torch.empty(codebook_size, dim).uniform_(-1.0 / codebook_size, 1.0 / codebook_size))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z (B, D, H, W) -> (z_q with straight-through gradient, loss, indices (B, H, W))."""
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        idx, _ = nearest_code(flat.detach(), self.codebook.detach(), self.lookup_memory_mb)
        zq = F.embedding(idx, self.codebook).to(flat.dtype)
        loss = vq_loss(zq, flat, self.beta, self.legacy_beta)
        zq = flat + (zq - flat).detach()  # straight-through: d z_q / d z = identity
        zq = zq.reshape(b, h, w, d).permute(0, 3, 1, 2).contiguous()
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
