"""VQCT's transfer quantizer: the codebook is the output of a GCN over frozen word
embeddings from a pretrained language model, recomputed every step.

The quantized map has two halves of `code_dim` channels each: the first is matched to
adjective codes (the mean of its `topk` nearest), the second to the nearest noun code;
the halves are concatenated ("adjective + noun"), straight-through. Only the GCN (and the
model's convs) train: every code is a function of shared weights, so every code moves at
every step and none dies.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqct_kernels import Graph, gcn_aggregate, nearest_code, nearest_codes_topk, normalized_graph
from vqct.quantize.usage import ReportsUsage, perplexity
from vqct.quantize.vector_quantizer import vq_loss


class GCNLayer(nn.Module):
    """H' = D^-1/2 (A+I) D^-1/2 H W + b, with W applied on the narrower side."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim, bias=False)
        self.bias = nn.Parameter(torch.zeros(out_dim))
        nn.init.xavier_uniform_(self.linear.weight)

    def forward(self, x: torch.Tensor, adjacency: Graph) -> torch.Tensor:
        x = x.to(self.bias.dtype)
        if self.linear.out_features <= self.linear.in_features:
            h = gcn_aggregate(adjacency, self.linear(x))
        else:
            h = self.linear(gcn_aggregate(adjacency, x))
        return h + self.bias


class TransferNetwork(nn.Module):
    """The paper's 2-layer GCN: in -> hidden (ReLU, dropout) -> out."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, dropout: float):
        super().__init__()
        self.layer1 = GCNLayer(in_dim, hidden)
        self.layer2 = GCNLayer(hidden, out_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, adjacency: Graph) -> torch.Tensor:
        return self.layer2(self.dropout(F.relu(self.layer1(x, adjacency))), adjacency)


class AdjNounQuantizer(ReportsUsage, nn.Module):
    """VQCT's quantization, whatever gives the codebook (subclasses say what: `codebook()`): the
    map's first half is matched to adjective codes (the mean of its `topk` nearest), the second
    to the nearest noun code, both halves straight-through."""

    def __init__(self, num_adj: int, num_noun: int, code_dim: int, topk: int = 2, beta: float = 0.25,
                 legacy_beta: bool = True, lookup_memory_mb: float = 256.0):
        super().__init__()
        self.num_adj, self.num_noun = num_adj, num_noun
        self.code_dim = code_dim
        self.channels = 2 * code_dim
        self.topk = min(topk, num_adj)
        self.beta, self.legacy_beta, self.lookup_memory_mb = beta, legacy_beta, lookup_memory_mb

    @property
    def groups(self) -> dict[str, int]:
        return {"adj": self.num_adj, "noun": self.num_noun}

    def codebook(self) -> torch.Tensor:
        """(adjectives + nouns, code_dim)."""
        raise NotImplementedError

    def forward(self, z: torch.Tensor, with_codes: bool = False):
        """z (B, 2C, H, W) -> (z_q, loss, indices (B, H, W, topk + 1): adjectives then noun), and
        with WITH_CODES the code vectors (B, 2C, H, W), whose gradient reaches the codebook."""
        b, c, h, w = z.shape
        codes = self.codebook()
        adj_codes, noun_codes = codes[: self.num_adj], codes[self.num_adj:]
        flat = z.permute(0, 2, 3, 1).reshape(-1, c)
        za, zn = flat[:, : self.code_dim], flat[:, self.code_dim:]
        adj_idx, _ = nearest_codes_topk(za.detach(), adj_codes.detach(), self.topk, self.lookup_memory_mb)
        noun_idx, _ = nearest_code(zn.detach(), noun_codes.detach(), self.lookup_memory_mb)
        qa = adj_codes[adj_idx].mean(dim=1).to(za.dtype)
        qn = noun_codes[noun_idx].to(zn.dtype)
        loss = vq_loss(qa, za, self.beta, self.legacy_beta) + vq_loss(qn, zn, self.beta, self.legacy_beta)
        zq = torch.cat([za + (qa - za).detach(), zn + (qn - zn).detach()], dim=1)
        zq = zq.reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous()
        indices = torch.cat([adj_idx, noun_idx.unsqueeze(1)], dim=1).reshape(b, h, w, self.topk + 1)
        if with_codes:
            return zq, loss, indices, torch.cat([qa, qn], dim=1).reshape(b, h, w, c).permute(0, 3, 1, 2)
        return zq, loss, indices

    def code_counts(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        flat = indices.reshape(-1, self.topk + 1)
        return {"adj": torch.bincount(flat[:, :-1].reshape(-1), minlength=self.num_adj),
                "noun": torch.bincount(flat[:, -1], minlength=self.num_noun)}

    def pair_stats(self, indices: torch.Tensor) -> dict[str, float]:
        """Distinct (nearest adjective, noun) pairs in this batch and their perplexity."""
        flat = indices.reshape(-1, self.topk + 1)
        pairs = flat[:, 0] * self.num_noun + flat[:, -1]
        _, counts = torch.unique(pairs, return_counts=True)
        return {"pairs_distinct": float(counts.numel()), "pairs_perplexity": perplexity(counts)}

    @torch.no_grad()
    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        codes = self.codebook()
        adj = codes[: self.num_adj][indices[..., :-1]].mean(dim=-2)
        noun = codes[self.num_adj:][indices[..., -1]]
        return torch.cat([adj, noun], dim=-1).permute(0, 3, 1, 2).contiguous()


class TransferQuantizer(AdjNounQuantizer):
    """VQCT's training quantizer: the codebook is the GCN's output over the frozen word embeddings."""

    def __init__(self, adjective_embeddings: torch.Tensor, noun_embeddings: torch.Tensor,
                 edge_index: torch.Tensor, edge_weight: torch.Tensor, code_dim: int, hidden: int,
                 dropout: float = 0.5, topk: int = 2, beta: float = 0.25, legacy_beta: bool = True,
                 lookup_memory_mb: float = 256.0):
        super().__init__(adjective_embeddings.shape[0], noun_embeddings.shape[0], code_dim, topk, beta,
                         legacy_beta, lookup_memory_mb)
        # Frozen priors are buffers (never optimised); not persistent: the priors cache holds them.
        words = torch.cat([adjective_embeddings, noun_embeddings]).float()
        self.register_buffer("word_embeddings", words, persistent=False)
        graph = normalized_graph(edge_index.long(), edge_weight.float(), words.shape[0])
        # Plain tensors as buffers: DeepSpeed broadcasts buffers at start and moves them with the module.
        for name, tensor in graph._asdict().items():
            self.register_buffer(f"graph_{name}", tensor, persistent=False)
        self.transfer = TransferNetwork(words.shape[1], hidden, code_dim, dropout)

    def adjacency(self) -> Graph:
        return Graph(*(getattr(self, f"graph_{name}") for name in Graph._fields))

    def codebook(self) -> torch.Tensor:
        """(adjectives + nouns, code_dim): the transfer network's output."""
        return self.transfer(self.word_embeddings, self.adjacency())


class FixedAdjNounQuantizer(AdjNounQuantizer):
    """The same quantization over a codebook computed once (the transfer network's output in
    eval mode): what a trained tokenizer needs at inference, without the text model or graph."""

    def __init__(self, codes: torch.Tensor, num_adj: int, topk: int = 2, beta: float = 0.25,
                 legacy_beta: bool = True, lookup_memory_mb: float = 256.0):
        super().__init__(num_adj, codes.shape[0] - num_adj, codes.shape[1], topk, beta, legacy_beta,
                         lookup_memory_mb)
        self.register_buffer("codes", codes.detach().float().clone())

    def codebook(self) -> torch.Tensor:
        return self.codes
