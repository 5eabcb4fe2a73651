"""Nearest-code lookup: for queries z (N, D) and codes C (K, D), the index and distance of
the nearest code (or the k nearest, nearest first), by squared L2 or cosine distance.

CUDA tensors go to the fused Triton kernel (lookup_triton.py); other tensors to a PyTorch
path that chunks N so that one chunk's (chunk, K) distance block stays within a memory
budget: the full N x K matrix (65,536 x 100k in fp32 is 24 GiB) is never built. Either way
ties go to the smaller index, as torch.argmin does, and distances are fp32.

Cosine distance is 1 - cos(z, c): both sides are L2-normalised, then half the squared L2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vqct_kernels.dispatch import use_triton

METRICS = ("l2", "cosine")


def _check(z: torch.Tensor, codes: torch.Tensor, metric: str) -> None:
    if z.dim() != 2 or codes.dim() != 2 or z.shape[1] != codes.shape[1]:
        raise ValueError(f"the lookup wants z (N, D) and codes (K, D), got {tuple(z.shape)} and {tuple(codes.shape)}")
    if metric not in METRICS:
        raise ValueError(f"metric='{metric}' is not known (known: {', '.join(METRICS)})")


def _prepare(z, codes, metric):
    if metric == "cosine":
        return F.normalize(z.float(), dim=1).to(z.dtype), F.normalize(codes.float(), dim=1).to(codes.dtype)
    return z, codes


def nearest_code_reference(z: torch.Tensor, codes: torch.Tensor, metric: str = "l2") -> tuple[torch.Tensor, torch.Tensor]:
    """Brute force: the full distance matrix in float64, then argmin. For tests."""
    z, codes = _prepare(z.double(), codes.double(), metric)
    d = torch.cdist(z, codes).pow_(2)
    dist, idx = d.min(dim=1)
    return idx, (dist / 2 if metric == "cosine" else dist).float()


def nearest_codes_topk_reference(z, codes, k: int, metric: str = "l2") -> tuple[torch.Tensor, torch.Tensor]:
    """Brute force top-k in float64; equal distances ordered by index (a stable sort)."""
    z, codes = _prepare(z.double(), codes.double(), metric)
    d = torch.cdist(z, codes).pow_(2)
    dist, idx = torch.sort(d, dim=1, stable=True)
    dist = dist[:, :k] / 2 if metric == "cosine" else dist[:, :k]
    return idx[:, :k], dist.float()


def _chunk_rows(num_codes: int, memory_mb: float) -> int:
    bytes_per_row = num_codes * 4 * 2  # the distance block and its argmin temporaries, fp32
    return max(1, int(memory_mb * 2**20 // bytes_per_row))


def chunked_lookup(z: torch.Tensor, codes: torch.Tensor, k: int, memory_mb: float) -> tuple[torch.Tensor, torch.Tensor]:
    z, codes = z.float(), codes.float()
    code_sq = codes.pow(2).sum(1)
    rows = _chunk_rows(codes.shape[0], memory_mb)
    idx = torch.empty(z.shape[0], k, dtype=torch.long, device=z.device)
    dist = torch.empty(z.shape[0], k, dtype=torch.float32, device=z.device)
    for start in range(0, z.shape[0], rows):
        zc = z[start:start + rows]
        # ||z||^2 - 2 z.C^T + ||C||^2, with the z term added after the selection (it is per row).
        block = torch.addmm(code_sq.unsqueeze(0), zc, codes.t(), beta=1.0, alpha=-2.0)
        if k == 1:
            best, arg = block.min(dim=1, keepdim=True)  # first minimum: the smaller index
        else:
            best, arg = _stable_topk(block, k)
        idx[start:start + rows] = arg
        dist[start:start + rows] = (best + zc.pow(2).sum(1, keepdim=True)).clamp_min_(0.0)
    return idx, dist


def _stable_topk(block: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.topk does not order equal values by index; re-sort its candidates stably, taking
    every value equal to the k-th so that a tie at the boundary keeps the smaller index."""
    kth = block.topk(k, dim=1, largest=False).values[:, -1:]
    width = int((block <= kth).sum(1).max())
    best, arg = block.topk(width, dim=1, largest=False, sorted=True)
    order = torch.argsort(arg.masked_fill(best > kth, torch.iinfo(arg.dtype).max), dim=1)  # index order
    best, arg = best.gather(1, order), arg.gather(1, order)
    order = torch.sort(best, dim=1, stable=True).indices[:, :k]  # then by value, stable
    return best.gather(1, order), arg.gather(1, order)


@torch.no_grad()
def nearest_codes_topk(z: torch.Tensor, codes: torch.Tensor, k: int, memory_mb: float = 256.0,
                       metric: str = "l2") -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (N, k) int64 and distances (N, k) fp32 of each row's k nearest codes, nearest first."""
    _check(z, codes, metric)
    if not 1 <= k <= codes.shape[0]:
        raise ValueError(f"k={k} must be between 1 and the number of codes ({codes.shape[0]})")
    z, codes = _prepare(z, codes, metric)
    if use_triton(z) and k <= 8:
        from vqct_kernels.lookup_triton import nearest_codes_triton

        idx, dist = nearest_codes_triton(z, codes, k)
    else:
        idx, dist = chunked_lookup(z, codes, k, memory_mb)
    return idx, (dist / 2 if metric == "cosine" else dist)


def nearest_code(z: torch.Tensor, codes: torch.Tensor, memory_mb: float = 256.0,
                 metric: str = "l2") -> tuple[torch.Tensor, torch.Tensor]:
    """Index (N,) int64 and distance (N,) fp32 of each row's nearest code."""
    idx, dist = nearest_codes_topk(z, codes, 1, memory_mb, metric)
    return idx[:, 0], dist[:, 0]
