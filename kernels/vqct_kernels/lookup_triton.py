"""Fused nearest-code lookup in Triton: the N x K distance matrix is never materialised.

Each program owns BLOCK_N query rows and walks the codebook in BLOCK_K tiles. A tile's
distances come from one matrix-multiply tile plus the code norms (||c||^2 - 2 z.c; the
per-row ||z||^2 is added at the end), accumulated in fp32 whatever the input dtype, and are
folded into a running best (k = 1) or a running sorted top-k (k <= 8) kept in registers.
Ties go to the smaller code index, as torch.argmin does: within a tile by an explicit
index minimum, across tiles because earlier tiles hold smaller indices and only a strictly
smaller distance replaces them.

Extra memory is O(N): the outputs and the code norms (O(K)).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"
MAX_TOPK = 8

if INTERPRETING:  # the CPU interpreter is slow: one small configuration, no tuning sweep
    _CONFIGS = [triton.Config({"BLOCK_N": 16, "BLOCK_K": 16, "BLOCK_D": 16})]
else:
    _CONFIGS = [
        triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "BLOCK_D": bd}, num_warps=w, num_stages=s)
        for bn, bk, bd, w, s in [
            (64, 64, 32, 4, 3), (128, 64, 32, 4, 3), (128, 128, 32, 8, 3), (64, 128, 64, 4, 3),
            (128, 128, 64, 8, 3), (256, 64, 32, 8, 3), (128, 64, 64, 4, 4), (64, 64, 64, 4, 2),
        ]
    ]


@triton.jit
def _tile_distances(z_ptr, c_ptr, csq_ptr, rows, row_ok, k0, N, K, D, stride_z, stride_c,
                    CAST_F32: tl.constexpr, PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    BLOCK_D: tl.constexpr):
    """(BLOCK_N, BLOCK_K) of ||c||^2 - 2 z.c for codes k0..k0+BLOCK_K; +inf past K."""
    cols = k0 + tl.arange(0, BLOCK_K)
    col_ok = cols < K
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        d_ok = ds < D
        zt = tl.load(z_ptr + rows[:, None] * stride_z + ds[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        ct = tl.load(c_ptr + cols[None, :] * stride_c + ds[:, None], mask=col_ok[None, :] & d_ok[:, None], other=0.0)
        if CAST_F32:  # the interpreter's dot is wrong on bf16 operands
            zt = zt.to(tl.float32)
            ct = ct.to(tl.float32)
        acc = tl.dot(zt, ct, acc, input_precision=PRECISION, out_dtype=tl.float32)
    csq = tl.load(csq_ptr + cols, mask=col_ok, other=0.0)
    dist = csq[None, :] - 2.0 * acc
    return tl.where(col_ok[None, :], dist, float("inf")), cols


@triton.jit
def _row_min(dist, index, BIG: tl.constexpr):
    """Per row: the smallest value and the smallest INDEX (broadcast against DIST) holding it."""
    best = tl.min(dist, axis=1)
    arg = tl.min(tl.where(dist == best[:, None], index, BIG), axis=1)
    return best, arg


@triton.autotune(configs=_CONFIGS, key=["K", "D", "TOPK"])
@triton.jit
def _nearest_kernel(z_ptr, c_ptr, csq_ptr, zsq_ptr, idx_ptr, dist_ptr, N, K, D, stride_z, stride_c,
                    TOPK: tl.constexpr, TOPK_PAD: tl.constexpr, CAST_F32: tl.constexpr,
                    PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    BIG: tl.constexpr = 2147483647
    slots = tl.arange(0, TOPK_PAD)
    run_d = tl.full((BLOCK_N, TOPK_PAD), float("inf"), dtype=tl.float32)
    run_i = tl.full((BLOCK_N, TOPK_PAD), BIG, dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        dist, cols = _tile_distances(z_ptr, c_ptr, csq_ptr, rows, row_ok, k0, N, K, D, stride_z, stride_c,
                                     CAST_F32, PRECISION, BLOCK_N, BLOCK_K, BLOCK_D)
        if TOPK == 1:
            best, arg = _row_min(dist, cols[None, :], BIG)
            better = best < tl.min(run_d, axis=1)  # strict: an equal distance keeps the earlier index
            run_d = tl.where(better[:, None], best[:, None], run_d)
            run_i = tl.where(better[:, None], arg[:, None], run_i)
        else:
            # Merge the tile into the sorted running list by TOPK extractions of the smaller head.
            new_d = tl.full((BLOCK_N, TOPK_PAD), float("inf"), dtype=tl.float32)
            new_i = tl.full((BLOCK_N, TOPK_PAD), BIG, dtype=tl.int32)
            for j in tl.static_range(TOPK):
                tile_best, tile_arg = _row_min(dist, cols[None, :], BIG)
                run_best, run_arg = _row_min(run_d, run_i, BIG)  # run_i ordered like its distances
                take_tile = (tile_best < run_best) | ((tile_best == run_best) & (tile_arg < run_arg))
                value = tl.where(take_tile, tile_best, run_best)
                index = tl.where(take_tile, tile_arg, run_arg)
                new_d = tl.where(slots[None, :] == j, value[:, None], new_d)
                new_i = tl.where(slots[None, :] == j, index[:, None], new_i)
                dist = tl.where(take_tile[:, None] & (cols[None, :] == tile_arg[:, None]), float("inf"), dist)
                run_d = tl.where(~take_tile[:, None] & (run_i == run_arg[:, None]), float("inf"), run_d)
            run_d, run_i = new_d, new_i
    zsq = tl.load(zsq_ptr + rows, mask=row_ok, other=0.0)
    out_d = tl.maximum(run_d + zsq[:, None], 0.0)
    out_mask = row_ok[:, None] & (slots[None, :] < TOPK)
    tl.store(idx_ptr + rows[:, None] * TOPK + slots[None, :], run_i.to(tl.int64), mask=out_mask)
    tl.store(dist_ptr + rows[:, None] * TOPK + slots[None, :], out_d, mask=out_mask)


def _precision(z: torch.Tensor) -> str:
    """fp32 inputs take exact fp32 products unless the user allowed TF32 for matmuls, as torch does."""
    if z.dtype == torch.float32 and not INTERPRETING and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def nearest_codes_triton(z: torch.Tensor, codes: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (N, k) int64 and squared L2 distances (N, k) fp32, nearest first."""
    if not 1 <= k <= min(MAX_TOPK, codes.shape[0]):
        raise ValueError(f"k={k}: the Triton lookup keeps 1 to {MAX_TOPK} nearest codes (and at most K)")
    if codes.dtype != z.dtype:
        codes = codes.to(z.dtype)
    z, codes = z.contiguous(), codes.contiguous()
    n, d = z.shape
    num_codes = codes.shape[0]
    code_sq = codes.float().pow(2).sum(1)
    z_sq = z.float().pow(2).sum(1)
    idx = torch.empty(n, k, dtype=torch.int64, device=z.device)
    dist = torch.empty(n, k, dtype=torch.float32, device=z.device)
    topk_pad = max(2, triton.next_power_of_2(k))

    def grid(meta):
        return (triton.cdiv(n, meta["BLOCK_N"]),)

    _nearest_kernel[grid](z, codes, code_sq, z_sq, idx, dist, n, num_codes, d, z.stride(0), codes.stride(0),
                          TOPK=k, TOPK_PAD=topk_pad, CAST_F32=INTERPRETING, PRECISION=_precision(z))
    return idx, dist
