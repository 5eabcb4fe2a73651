"""Codebook lookup and graph kernels: Triton on CUDA, with PyTorch references and CPU paths.

Models call only the entry points exported here; which implementation runs is decided
by the tensors' device (vqct_kernels.dispatch; docs/architecture.md, "Kernels").
"""

from vqct_kernels.graph import Graph, gcn_aggregate, normalized_graph
from vqct_kernels.lookup import nearest_code, nearest_code_reference, nearest_codes_topk

__all__ = ["Graph", "gcn_aggregate", "nearest_code", "nearest_code_reference", "nearest_codes_topk",
           "normalized_graph"]
