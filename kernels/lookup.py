"""Nearest-code lookup: for queries z (N, D) and codes C (K, D), the index and squared L2
distance of the nearest code.

The PyTorch path chunks N so that one chunk's (chunk, K) distance block stays within a
memory budget: the full N x K matrix (65,536 x 100k in fp32 is 24 GiB) is never built.
Ties go to the smaller index, as torch.argmin does.
"""

from __future__ import annotations

import torch


def nearest_code_reference(z: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The unchunked reference: full distance matrix, fp32."""
    d = torch.cdist(z.float(), codes.float()).pow_(2)
    dist, idx = d.min(dim=1)
    return idx, dist


def _chunk_rows(num_codes: int, memory_mb: float) -> int:
    bytes_per_row = num_codes * 4 * 2  # the distance block and its argmin temporaries, fp32
    return max(1, int(memory_mb * 2**20 // bytes_per_row))


@torch.no_grad()
def nearest_code(z: torch.Tensor, codes: torch.Tensor, memory_mb: float = 256.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Index (N,) int64 and squared distance (N,) fp32 of each row's nearest code."""
    if z.dim() != 2 or codes.dim() != 2 or z.shape[1] != codes.shape[1]:
        raise ValueError(f"nearest_code wants z (N, D) and codes (K, D), got {tuple(z.shape)} and {tuple(codes.shape)}")
    z, codes = z.float(), codes.float()
    code_sq = codes.pow(2).sum(1)
    rows = _chunk_rows(codes.shape[0], memory_mb)
    idx = torch.empty(z.shape[0], dtype=torch.long, device=z.device)
    dist = torch.empty(z.shape[0], dtype=torch.float32, device=z.device)
    for start in range(0, z.shape[0], rows):
        zc = z[start:start + rows]
        # ||z||^2 - 2 z.C^T + ||C||^2, with the z term added after the argmin (it is per row).
        block = torch.addmm(code_sq.unsqueeze(0), zc, codes.t(), beta=1.0, alpha=-2.0)
        best, arg = block.min(dim=1)
        idx[start:start + rows] = arg
        dist[start:start + rows] = (best + zc.pow(2).sum(1)).clamp_min_(0.0)
    return idx, dist


@torch.no_grad()
def nearest_codes_topk(z: torch.Tensor, codes: torch.Tensor, k: int, memory_mb: float = 256.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (N, k) and squared distances (N, k) of each row's K nearest codes, nearest first."""
    if k == 1:
        idx, dist = nearest_code(z, codes, memory_mb)
        return idx.unsqueeze(1), dist.unsqueeze(1)
    if not 1 <= k <= codes.shape[0]:
        raise ValueError(f"k={k} must be between 1 and the number of codes ({codes.shape[0]})")
    z, codes = z.float(), codes.float()
    code_sq = codes.pow(2).sum(1)
    rows = _chunk_rows(codes.shape[0], memory_mb)
    idx = torch.empty(z.shape[0], k, dtype=torch.long, device=z.device)
    dist = torch.empty(z.shape[0], k, dtype=torch.float32, device=z.device)
    for start in range(0, z.shape[0], rows):
        zc = z[start:start + rows]
        block = torch.addmm(code_sq.unsqueeze(0), zc, codes.t(), beta=1.0, alpha=-2.0)
        best, arg = block.topk(k, dim=1, largest=False, sorted=True)
        idx[start:start + rows] = arg
        dist[start:start + rows] = (best + zc.pow(2).sum(1, keepdim=True)).clamp_min_(0.0)
    return idx, dist
