"""Timing and peak extra memory of one callable, on CUDA or on the CPU.

CPU peak memory comes from the kernel's resident-set high-water mark, reset before each
measurement through /proc/self/clear_refs (Linux): torch keeps no CPU allocator statistics,
and large tensors are mmapped, so freeing them lowers the resident set again.
"""

from __future__ import annotations

import functools
import platform
import re
import statistics
import time
from typing import Callable

import torch

from vqct.host_memory import M_MMAP_THRESHOLD, mallopt


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


# Dense peak FLOP/s of the GPUs this project is measured on (NVIDIA's data sheets, SXM parts):
# bf16 on the tensor cores, fp32 without them.
_PEAK_FLOPS = {"H100": {"bf16": 989e12, "fp32": 67e12}, "H200": {"bf16": 989e12, "fp32": 67e12},
               "A100": {"bf16": 312e12, "fp32": 19.5e12}}


def peak_flops(device: torch.device, precision: str) -> float | None:
    """The device's peak for PRECISION, or None (CPUs, and GPUs not in the table)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peaks.get(precision) for key, peaks in _PEAK_FLOPS.items() if key in name), None)


def _status_bytes(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            match = re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


@functools.cache
def _fixed_mmap_threshold() -> None:
    """glibc raises its mmap threshold after large frees (up to 32 MiB), after which such
    blocks reuse heap pages that are already resident and never show in the high-water
    mark; a fixed threshold keeps every large tensor mmapped and visible."""
    mallopt(M_MMAP_THRESHOLD, 128 * 1024)


def _reset_cpu_peak() -> int | None:
    _fixed_mmap_threshold()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident set
    except OSError:
        return None
    return _status_bytes("VmRSS")


def time_interleaved(steps: dict, count: int, warmup: int, device: torch.device) -> dict[str, float]:
    """Median seconds per call of each callable, the calls alternating so that every one
    sees the same machine (load, clocks, caches) over the run."""
    cuda = device.type == "cuda"
    for _ in range(warmup):
        for fn in steps.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(count):
        for name, fn in steps.items():
            if cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def measure(fn: Callable[[], object], device: torch.device, reps: int = 3, warmup: int = 1) -> dict:
    """{'ms': median milliseconds, 'peak_extra_mib': peak memory above what was allocated
    before the call}, or {'error': 'out of memory'}."""
    cuda = device.type == "cuda"
    try:
        for _ in range(warmup):
            fn()
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        else:
            base = _reset_cpu_peak()
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize(device)
            times.append((time.perf_counter() - start) * 1e3)
    except (RuntimeError, torch.OutOfMemoryError) as exc:
        if not is_oom(exc):
            raise
        if cuda:
            torch.cuda.empty_cache()
        return {"error": "out of memory"}
    if cuda:
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        high = _status_bytes("VmHWM")
        peak = high - base if base is not None and high is not None else None
    return {"ms": round(statistics.median(times), 3),
            "peak_extra_mib": None if peak is None else round(max(peak, 0) / 2**20, 1)}


def ratio(baseline: dict, ours: dict) -> float | None:
    """Baseline time over ours: > 1 means ours is faster."""
    if "ms" not in baseline or "ms" not in ours or ours["ms"] <= 0:
        return None
    return round(baseline["ms"] / ours["ms"], 3)
