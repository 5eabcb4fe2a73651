"""Which implementation a kernel entry point runs: Triton for CUDA tensors, PyTorch otherwise.

VQCT_KERNELS=torch forces the PyTorch paths everywhere (to compare, or to rule the kernels
out when debugging); VQCT_KERNELS=triton also sends CPU tensors to Triton, which only works
under TRITON_INTERPRET=1 (the tests).
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch


@functools.cache
def triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def use_triton(tensor: torch.Tensor) -> bool:
    choice = os.environ.get("VQCT_KERNELS", "auto")
    if choice == "torch" or not triton_importable():
        return False
    if choice == "triton":
        return True
    return tensor.is_cuda
