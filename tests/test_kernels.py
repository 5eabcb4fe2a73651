"""The lookup and graph kernels against brute-force references.

The Triton kernels themselves run here on CPU tensors under TRITON_INTERPRET=1 (conftest
sets it when no GPU is present), so CI checks the kernel code, not only the fallbacks.
"""

import os

import pytest
import torch

from vqct_kernels import lookup
from vqct_kernels.graph import (aggregate_index_add, aggregate_sparse, gcn_aggregate, normalized_graph,
                                to_dense)

triton_runs_here = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available(),
    reason="Triton needs a GPU or TRITON_INTERPRET=1")

# (N, K, D): none a multiple of the 16-wide interpreter tiles; small K, K across many tiles, D = 1024.
SHAPES = [(37, 50, 8), (20, 300, 33), (5, 17, 70), (3, 1030, 5), (4, 20, 1024)]


def _data(n, k, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    z, codes = torch.randn(n, d, generator=g), torch.randn(k, d, generator=g)
    codes[5] = codes[3]  # a duplicate code: every tie must go to index 3
    codes[k - 1] = codes[3]
    z[0] = codes[3]  # a query exactly on the duplicated code
    return z, codes


def _check(idx, dist, ref_idx, ref_dist, dim):
    assert torch.equal(idx.cpu(), ref_idx)
    # Relative 1e-4; near zero, ||z||^2 - 2z.c + ||c||^2 cancels terms of size ~D in fp32.
    torch.testing.assert_close(dist.cpu(), ref_dist, rtol=1e-4, atol=1e-6 * dim)


def _triton(z, codes, k, metric):
    from vqct_kernels.lookup_triton import nearest_codes_triton

    z, codes = lookup._prepare(z, codes, metric)
    idx, dist = nearest_codes_triton(z, codes, k)
    return idx, dist / 2 if metric == "cosine" else dist


@triton_runs_here
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_triton_lookup_equals_brute_force(shape, metric):
    z, codes = _data(*shape)
    for k in (1, 3, 8):
        ref_idx, ref_dist = lookup.nearest_codes_topk_reference(z, codes, k, metric)
        _check(*_triton(z, codes, k, metric), ref_idx, ref_dist, shape[2])
    assert _triton(z, codes, 2, metric)[0][0].tolist() == [3, 5]  # the tie, smaller index first


@triton_runs_here
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_lookup_accumulates_half_inputs_in_fp32(dtype):
    z, codes = _data(40, 70, 24)
    z, codes = z.to(dtype), codes.to(dtype)
    ref_idx, ref_dist = lookup.nearest_codes_topk_reference(z.float(), codes.float(), 2)
    idx, dist = _triton(z, codes, 2, "l2")
    _check(idx, dist, ref_idx, ref_dist, 24)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_chunked_lookup_equals_brute_force(shape, metric, monkeypatch):
    monkeypatch.setenv("VQCT_KERNELS", "torch")
    z, codes = _data(*shape)
    for k in (1, 3, 8):
        ref_idx, ref_dist = lookup.nearest_codes_topk_reference(z, codes, k, metric)
        # A budget of a few rows per chunk: the chunk seams are crossed many times.
        _check(*lookup.nearest_codes_topk(z, codes, k, memory_mb=0.002, metric=metric), ref_idx, ref_dist,
               shape[2])
    idx, _ = lookup.nearest_code(z, codes, metric=metric)
    assert idx[0] == 3


def test_chunk_size_keeps_the_distance_block_within_the_budget():
    for num_codes, budget_mb in [(1024, 1.0), (262_144, 64.0), (100_000, 0.5)]:
        rows = lookup._chunk_rows(num_codes, budget_mb)
        assert rows >= 1 and (rows == 1 or rows * num_codes * 8 <= budget_mb * 2**20)


def test_lookup_rejects_bad_shapes_and_metrics():
    with pytest.raises(ValueError, match="wants z"):
        lookup.nearest_code(torch.zeros(3, 4), torch.zeros(5, 6))
    with pytest.raises(ValueError, match="metric='dot'"):
        lookup.nearest_code(torch.zeros(3, 4), torch.zeros(5, 4), metric="dot")


def _graph(n=40, edges=130, seed=0):
    g = torch.Generator().manual_seed(seed)
    index = torch.randint(0, n, (2, edges), generator=g)
    weight = torch.rand(edges, generator=g) + 0.1
    dense = torch.zeros(n, n).index_put_((index[0], index[1]), weight, accumulate=True) + torch.eye(n)
    d = dense.sum(1).pow(-0.5)
    return normalized_graph(index, weight, n), d[:, None] * dense * d[None, :]


def test_normalized_graph_matches_the_dense_gcn_formula():
    graph, reference = _graph()
    torch.testing.assert_close(to_dense(graph), reference)
    torch.testing.assert_close(to_dense(graph._replace(crow=graph.crow_t, col=graph.col_t, val=graph.val_t)),
                               reference.t())


@triton_runs_here
@pytest.mark.parametrize("width", [1, 37])
def test_triton_graph_kernel_forward_and_gradient_against_dense(width):
    from vqct_kernels.graph_triton import aggregate_triton

    graph, reference = _graph()
    x = torch.randn(reference.shape[0], width, requires_grad=True)
    out = aggregate_triton(graph, x)
    torch.testing.assert_close(out, reference @ x, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(out)
    out.backward(grad)
    torch.testing.assert_close(x.grad, reference.t() @ grad, rtol=1e-5, atol=1e-5)


def test_pytorch_graph_paths_against_dense_and_gradcheck(monkeypatch):
    monkeypatch.setenv("VQCT_KERNELS", "torch")
    graph, reference = _graph(n=12, edges=30)
    x = torch.randn(12, 5, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(gcn_aggregate(graph, x), reference.double() @ x)
    torch.testing.assert_close(aggregate_index_add(graph, x), reference.double() @ x)
    graph64 = graph._replace(val=graph.val.double(), val_t=graph.val_t.double())
    assert torch.autograd.gradcheck(lambda t: aggregate_sparse(graph64, t), (x,))
    assert torch.autograd.gradcheck(lambda t: aggregate_index_add(graph64, t), (x,))


@triton_runs_here
def test_a_trained_transfer_quantizer_picks_the_same_codes_through_the_kernel(monkeypatch):
    """A few optimiser steps, then the quantizer's lookups through Triton vs the reference."""
    from vqct.quantize import TransferQuantizer

    g = torch.Generator().manual_seed(0)
    adj, noun = torch.randn(20, 16, generator=g), torch.randn(24, 16, generator=g)
    edges = torch.stack([torch.randint(0, 20, (60,), generator=g), 20 + torch.randint(0, 24, (60,), generator=g)])
    quantizer = TransferQuantizer(adj, noun, torch.cat([edges, edges.flip(0)], 1), torch.ones(120),
                                  code_dim=8, hidden=16, dropout=0.0, topk=2)
    opt = torch.optim.Adam(quantizer.parameters(), lr=1e-2)
    z = torch.randn(2, 16, 4, 4, generator=g, requires_grad=True)
    monkeypatch.setenv("VQCT_KERNELS", "torch")
    for _ in range(5):
        opt.zero_grad()
        zq, loss, _ = quantizer(z)
        (loss + zq.pow(2).mean()).backward()
        opt.step()
    with torch.no_grad():
        _, _, torch_indices = quantizer(z)
        monkeypatch.setenv("VQCT_KERNELS", "triton")
        _, _, triton_indices = quantizer(z)
        codes = quantizer.codebook()
    flat = z.detach().permute(0, 2, 3, 1).reshape(-1, 16)
    ref_adj, _ = lookup.nearest_codes_topk_reference(flat[:, :8], codes[:20], 2)
    ref_noun, _ = lookup.nearest_code_reference(flat[:, 8:], codes[20:])
    assert torch.equal(triton_indices, torch_indices)
    assert torch.equal(triton_indices.reshape(-1, 3), torch.cat([ref_adj, ref_noun.unsqueeze(1)], 1))
