"""The adjective-noun graph over the vocabulary: nodes are adjectives then nouns.

An edge for every adjective directly followed by a noun in a caption, weighted by how
often, symmetric (the paper's graph). Optionally each word also links to its K nearest
words in embedding space (ours), so that words that never co-occur, such as lexicon
words, are not isolated. Self-loops and normalisation belong to the GCN layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cooccurrence_edges(adjectives: list[str], nouns: list[str], pairs: dict[str, int]) -> dict[tuple[int, int], float]:
    adj_index = {w: i for i, w in enumerate(adjectives)}
    noun_index = {w: len(adjectives) + i for i, w in enumerate(nouns)}
    edges: dict[tuple[int, int], float] = {}
    for pair, count in pairs.items():
        adj, noun = pair.split(" ", 1)
        if adj in adj_index and noun in noun_index:
            a, n = adj_index[adj], noun_index[noun]
            edges[(a, n)] = edges.get((a, n), 0.0) + float(count)
            edges[(n, a)] = edges.get((n, a), 0.0) + float(count)
    return edges


def knn_edges(embeddings: torch.Tensor, k: int, weight: float) -> dict[tuple[int, int], float]:
    """Symmetric edges to each node's K most cosine-similar nodes (self excluded)."""
    if k <= 0 or embeddings.shape[0] < 2:
        return {}
    unit = F.normalize(embeddings.float(), dim=1)
    sim = unit @ unit.t()
    sim.fill_diagonal_(-2.0)
    nearest = sim.topk(min(k, embeddings.shape[0] - 1), dim=1).indices
    edges = {}
    for i, row in enumerate(nearest.tolist()):
        for j in row:
            edges[(i, j)] = weight
            edges[(j, i)] = weight
    return edges


def build_graph(adjectives: list[str], nouns: list[str], pairs: dict[str, int], embeddings: torch.Tensor,
                knn: int = 0, knn_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns edge_index (2, E) int64 and edge_weight (E,) float32, sorted by (row, col)."""
    edges = knn_edges(embeddings, knn, knn_weight)
    for key, count in cooccurrence_edges(adjectives, nouns, pairs).items():
        edges[key] = edges.get(key, 0.0) + count
    if not edges:
        return torch.zeros(2, 0, dtype=torch.long), torch.zeros(0)
    keys = sorted(edges)
    index = torch.tensor(keys, dtype=torch.long).t().contiguous()
    return index, torch.tensor([edges[k] for k in keys], dtype=torch.float32)
