"""Graph convolution aggregation for the transfer network: out = D^-1/2 (A + I) D^-1/2 X.

The graph is given once as weighted edges and kept in CSR form together with its
transpose (the backward pass multiplies by the transpose). CUDA tensors go to the Triton
kernel (graph_triton.py), others to torch.sparse; memory is O(edges), never O(nodes^2).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from vqct_kernels.dispatch import use_triton


class Graph(NamedTuple):
    """A normalised adjacency in CSR (row pointers, column indices, values) and its transpose."""
    crow: torch.Tensor
    col: torch.Tensor
    val: torch.Tensor
    crow_t: torch.Tensor
    col_t: torch.Tensor
    val_t: torch.Tensor

    @property
    def num_nodes(self) -> int:
        return self.crow.numel() - 1


def _csr(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, n: int):
    order = torch.argsort(rows * n + cols)  # row-major; the pairs are unique after coalescing
    rows, cols, values = rows[order], cols[order], values[order]
    crow = torch.zeros(n + 1, dtype=torch.long, device=rows.device)
    crow[1:] = torch.bincount(rows, minlength=n).cumsum(0)
    return crow, cols.contiguous(), values.contiguous()


def normalized_graph(edge_index: torch.Tensor, edge_weight: torch.Tensor, num_nodes: int) -> Graph:
    """D^-1/2 (A + I) D^-1/2 from weighted edges (2, E), as in GCN (degrees from the rows);
    repeated edges are summed."""
    loops = torch.arange(num_nodes, device=edge_index.device)
    rows = torch.cat([edge_index[0].long(), loops])
    cols = torch.cat([edge_index[1].long(), loops])
    weight = torch.cat([edge_weight.float(), torch.ones(num_nodes, device=edge_weight.device)])
    merged = torch.sparse_coo_tensor(torch.stack([rows, cols]), weight, (num_nodes, num_nodes),
                                     check_invariants=True).coalesce()
    (rows, cols), weight = merged.indices(), merged.values()
    degree = torch.zeros(num_nodes, device=weight.device).index_add_(0, rows, weight)
    inv_sqrt = degree.pow(-0.5)
    values = inv_sqrt[rows] * weight * inv_sqrt[cols]
    return Graph(*_csr(rows, cols, values, num_nodes), *_csr(cols, rows, values, num_nodes))


def _rows(crow: torch.Tensor) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(crow.numel() - 1, device=crow.device), crow.diff())


def to_sparse_coo(graph: Graph) -> torch.Tensor:
    n = graph.num_nodes
    return torch.sparse_coo_tensor(torch.stack([_rows(graph.crow), graph.col]), graph.val, (n, n),
                                   is_coalesced=True, check_invariants=False)


def to_dense(graph: Graph) -> torch.Tensor:
    return to_sparse_coo(graph).to_dense()


def aggregate_sparse(graph: Graph, x: torch.Tensor) -> torch.Tensor:
    """torch.sparse: the CPU path (and a benchmark baseline), differentiable in X."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32  # bf16 sparse mm: not on CPU
    return torch.sparse.mm(to_sparse_coo(graph).to(dtype), x.to(dtype)).to(x.dtype)


def aggregate_index_add(graph: Graph, x: torch.Tensor) -> torch.Tensor:
    """Gather-scale-scatter with index_add_ (a benchmark baseline): O(edges x width) memory."""
    messages = x[graph.col] * graph.val.to(x.dtype).unsqueeze(1)
    return torch.zeros_like(x).index_add_(0, _rows(graph.crow), messages)


def gcn_aggregate(graph: Graph, x: torch.Tensor) -> torch.Tensor:
    """GRAPH's normalised adjacency @ X (nodes, width), differentiable in X."""
    if x.shape[0] != graph.num_nodes:
        raise ValueError(f"x has {x.shape[0]} rows but the graph has {graph.num_nodes} nodes")
    if use_triton(x):
        from vqct_kernels.graph_triton import aggregate_triton

        return aggregate_triton(graph, x)
    return aggregate_sparse(graph, x)
