"""Codebook lookup and graph kernels, with PyTorch references and CPU paths.

Models call only the entry points exported here; which implementation runs is decided
by the tensors' device (DESIGN.md, Kernels).
"""

from vqct.kernels.lookup import nearest_code, nearest_code_reference

__all__ = ["nearest_code", "nearest_code_reference"]
