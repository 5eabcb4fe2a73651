"""The GCN aggregation in Triton: CSR sparse x dense, one program per (row, feature block).

Each program walks its row's edges in BLOCK_E chunks, gathers the neighbours' feature
slices and accumulates value * feature in fp32. The backward pass is the same kernel on the
transposed CSR (kept beside the forward one), so no atomics are needed in either direction.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"

if INTERPRETING:
    _CONFIGS = [triton.Config({"BLOCK_E": 16, "BLOCK_F": 16})]
else:
    _CONFIGS = [triton.Config({"BLOCK_E": be, "BLOCK_F": bf}, num_warps=w)
                for be, bf, w in [(16, 32, 1), (32, 32, 2), (32, 64, 2), (64, 64, 4), (16, 128, 4),
                                  (32, 128, 4), (64, 128, 4), (32, 256, 8)]]


@triton.autotune(configs=_CONFIGS, key=["F"])
@triton.jit
def _spmm_kernel(crow_ptr, col_ptr, val_ptr, x_ptr, out_ptr, F, stride_x, stride_out,
                 BLOCK_E: tl.constexpr, BLOCK_F: tl.constexpr):
    row = tl.program_id(0)
    fs = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    f_ok = fs < F
    start = tl.load(crow_ptr + row)
    end = tl.load(crow_ptr + row + 1)
    acc = tl.zeros((BLOCK_F,), dtype=tl.float32)
    for e0 in range(start, end, BLOCK_E):
        es = e0 + tl.arange(0, BLOCK_E)
        e_ok = es < end
        cols = tl.load(col_ptr + es, mask=e_ok, other=0)
        vals = tl.load(val_ptr + es, mask=e_ok, other=0.0).to(tl.float32)
        xs = tl.load(x_ptr + cols[:, None] * stride_x + fs[None, :], mask=e_ok[:, None] & f_ok[None, :], other=0.0)
        acc += tl.sum(vals[:, None] * xs.to(tl.float32), axis=0)
    tl.store(out_ptr + row * stride_out + fs, acc.to(out_ptr.dtype.element_ty), mask=f_ok)


def spmm(crow: torch.Tensor, col: torch.Tensor, val: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    x = x.contiguous()
    rows, width = crow.numel() - 1, x.shape[1]
    out = torch.empty(rows, width, dtype=x.dtype, device=x.device)
    if rows == 0 or width == 0:
        return out

    def grid(meta):
        return (rows, triton.cdiv(width, meta["BLOCK_F"]))

    _spmm_kernel[grid](crow, col, val, x, out, width, x.stride(0), out.stride(0))
    return out


class _Aggregate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, crow, col, val, crow_t, col_t, val_t):
        ctx.save_for_backward(crow_t, col_t, val_t)
        return spmm(crow, col, val, x)

    @staticmethod
    def backward(ctx, grad_out):
        crow_t, col_t, val_t = ctx.saved_tensors
        grad_x = spmm(crow_t, col_t, val_t, grad_out) if ctx.needs_input_grad[0] else None
        return grad_x, None, None, None, None, None, None


def aggregate_triton(graph, x: torch.Tensor) -> torch.Tensor:
    """GRAPH (vqct_kernels.graph.Graph) @ X, differentiable in X."""
    return _Aggregate.apply(x, *graph)
