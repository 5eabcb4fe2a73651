"""Graph convolution aggregation for the transfer network: out = D^-1/2 (A + I) D^-1/2 X.

The graph is given once as weighted edges; the normalised adjacency (self-loops added,
symmetric normalisation as in GCN) is built once and applied with torch.sparse, so memory
is O(edges), never O(nodes^2).
"""

from __future__ import annotations

import torch


def normalized_adjacency(edge_index: torch.Tensor, edge_weight: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """Sparse COO (num_nodes, num_nodes) matrix D^-1/2 (A + I) D^-1/2 from edges (2, E)."""
    loops = torch.arange(num_nodes, device=edge_index.device)
    rows = torch.cat([edge_index[0], loops])
    cols = torch.cat([edge_index[1], loops])
    weight = torch.cat([edge_weight.float(), torch.ones(num_nodes, device=edge_weight.device)])
    degree = torch.zeros(num_nodes, device=weight.device).index_add_(0, rows, weight)
    inv_sqrt = degree.pow(-0.5)
    values = inv_sqrt[rows] * weight * inv_sqrt[cols]
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (num_nodes, num_nodes),
                                   check_invariants=True).coalesce()


def gcn_aggregate(adjacency: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """ADJACENCY (sparse, normalised) @ X, differentiable in X."""
    return torch.sparse.mm(adjacency, x.float()).to(x.dtype)
