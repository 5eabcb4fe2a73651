"""Host memory of CPU training: keep what a step frees for the next step.

Why by hand: PyTorch's CPU allocator is the C library's malloc, and glibc hands the top of its
heap back to the kernel whenever more than its trim threshold (128 KiB at first) lies free
there. DeepSpeed's engine frees every gradient at the end of its step (`zero_grad` sets them to
None after the update), the moment the activations are freed too, so the whole heap top goes
back each step and the next backward faults every page in again: 142,000 minor page faults and
0.44 s of system time per step for the paper model at 64 px, batch 4 (docs/performance.md),
against 5,700 for a plain loop that frees its gradients before backward. No library setting
does this; jemalloc or tcmalloc would, but they must be preloaded before the process starts,
which a Ray worker or a `vqct` command cannot do for itself. glibc's `mallopt` can, at any time.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3
# Free heap above this stays in the process; a step's gradients and activations fit in it.
TRIM_THRESHOLD = 1 << 30
# Blocks up to this size come from the heap (and so are kept); larger ones are mapped and
# unmapped each time, as before. 32 MiB is glibc's largest allowed value on 64-bit machines.
MMAP_THRESHOLD = 32 << 20


def mallopt(option: int, value: int) -> bool:
    """glibc's mallopt(OPTION, VALUE) for this process; False where the C library is not glibc
    (musl and others have no mallopt: nothing is set)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        call = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    call.argtypes, call.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(call(option, value))


def keep_freed_memory() -> bool:
    """Set glibc's trim and mmap thresholds for this process (which also stops glibc's own
    adjustment of them). True when set."""
    return mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) and mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
