"""Codebook lookup and graph kernels, with PyTorch references and CPU paths.

Models call only the entry points exported here; which implementation runs is decided
by the tensors' device (DESIGN.md, Kernels).
"""

from vqct.kernels.graph import gcn_aggregate, normalized_adjacency
from vqct.kernels.lookup import nearest_code, nearest_code_reference, nearest_codes_topk

__all__ = ["gcn_aggregate", "nearest_code", "nearest_code_reference", "nearest_codes_topk",
           "normalized_adjacency"]
