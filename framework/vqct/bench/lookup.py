"""`vqct bench lookup`: the nearest-code lookup against the forms every public VQ uses.

Per shape (N queries, K codes, D dims): ours (the Triton kernel on CUDA, the chunked
PyTorch path elsewhere) against (a) torch.cdist + argmin, (b) the expanded
||z||^2 - 2 z C^T + ||C||^2 + argmin of taming / LlamaGen / VQCT, and on CUDA (c) the chunked
PyTorch path, and (d) vector-quantize-pytorch's `VectorQuantize` where it is installed (the VQ
library most projects import; `pip install -e '.[bench]'`), with whether its indices are ours;
time, peak extra memory, and each ratio, all measured in this run. On CUDA also the fraction
of the device's GEMM rate at the same shape (2NKD flops) that ours reaches.
"""

from __future__ import annotations

import sys

import torch

from vqct.bench.measure import device_name, measure, ratio
from vqct_kernels import lookup

FULL_SHAPES = [(65_536, k, d) for k in (1_024, 16_384, 262_144) for d in (8, 32, 256)]
# Scaled down for a CPU: the whole benchmark within a few minutes on 2 cores.
CPU_SHAPES = ([(16_384, k, d) for k in (1_024, 16_384) for d in (8, 32, 256)]
              + [(1_024, 262_144, 32), (4_096, 262_144, 32)])


def cdist_argmin(z, codes):
    d = torch.cdist(z, codes)
    return d.argmin(1)


def expanded_argmin(z, codes):
    d = z.pow(2).sum(1, keepdim=True) - 2 * z @ codes.t() + codes.pow(2).sum(1)
    return d.argmin(1)


def vq_library(codes):
    """vector-quantize-pytorch's VectorQuantize holding CODES, in eval mode so that a call is
    its lookup alone (no EMA update, no dead-code replacement), or None where the library is
    not installed. It computes in fp32 whatever the input's dtype."""
    try:
        from vector_quantize_pytorch import VectorQuantize
    except ImportError:
        return None
    vq = VectorQuantize(dim=codes.shape[1], codebook_size=codes.shape[0]).to(codes.device).eval()
    with torch.no_grad():
        vq.codebook = codes.float()
    return lambda z: vq(z.unsqueeze(0))[1].squeeze(0)


def _dense_bytes(n: int, k: int) -> int:
    return n * k * 4 * 2  # the fp32 distance matrix and one temporary of its size


def bench_shape(n: int, k: int, d: int, device, dtype, budget_mb: float, cpu_dense_cap: float, reps: int) -> dict:
    g = torch.Generator(device="cpu").manual_seed(0)
    z = torch.randn(n, d, generator=g).to(device, dtype)
    codes = torch.randn(k, d, generator=g).to(device, dtype)
    row = {"N": n, "K": k, "D": d}
    row["ours"] = measure(lambda: lookup.nearest_code(z, codes, budget_mb), device, reps)
    fits = device.type == "cuda" or _dense_bytes(n, k) <= cpu_dense_cap * 2**30
    skipped = {"error": f"skipped: needs {_dense_bytes(n, k) / 2**30:.1f} GiB (--cpu-dense-cap-gib)"}
    for name, fn in (("cdist", cdist_argmin), ("expanded", expanded_argmin)):
        row[name] = measure(lambda fn=fn: fn(z.float(), codes.float()), device, reps) if fits else skipped
    library = vq_library(codes)
    if library is not None:
        with torch.no_grad():
            row["vector_quantize_pytorch"] = measure(lambda: library(z), device, reps) if fits else skipped
            if "ms" in row["vector_quantize_pytorch"]:
                row["vector_quantize_pytorch_same_indices"] = bool(
                    torch.equal(library(z), lookup.nearest_code(z, codes, budget_mb)[0]))
    if device.type == "cuda":
        row["chunked"] = measure(lambda: lookup.chunked_lookup(z, codes, 1, budget_mb), device, reps)
        gemm = measure(lambda: z @ codes.t(), device, reps)
        row["gemm"] = gemm
        if "ms" in gemm and "ms" in row["ours"]:
            row["fraction_of_gemm_rate"] = round(gemm["ms"] / row["ours"]["ms"], 3)
            row["gemm_tflops"] = round(2 * n * k * d / gemm["ms"] / 1e9, 1)
    for name in ("cdist", "expanded", "chunked", "vector_quantize_pytorch"):
        if name in row:
            row[f"speedup_vs_{name}"] = ratio(row[name], row["ours"])
    if device.type != "cuda":
        peak = row["ours"].get("peak_extra_mib")
        row["ours_within_budget"] = None if peak is None else peak <= budget_mb + _slack_mib(n, k)
        row["ours_time_vs_expanded"] = ratio(row["ours"], row["expanded"]) if "ms" in row["expanded"] else None
    return row


def _slack_mib(n: int, k: int) -> float:
    """Outputs, norms and allocator rounding beside the chunk: O(N + K), not O(N K)."""
    return (n * 12 + k * 4) / 2**20 + 8


def bench_lookup(shapes: list[tuple[int, int, int]] | None, full: bool, dtype_name: str, budget_mb: float,
                 cpu_dense_cap: float, reps: int) -> dict:
    from tqdm import tqdm

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    if shapes is None:
        shapes = FULL_SHAPES if device.type == "cuda" or full else CPU_SHAPES
    rows = [bench_shape(n, k, d, device, dtype, budget_mb, cpu_dense_cap, reps)
            for n, k, d in tqdm(shapes, desc="bench lookup", file=sys.stderr)]
    return {"bench": "lookup", "device": device_name(device), "dtype": dtype_name,
            "ours": "triton" if device.type == "cuda" else "chunked pytorch",
            "memory_budget_mib": budget_mb, "torch": torch.__version__, "results": rows}


def parse_shapes(text: str) -> list[tuple[int, int, int]]:
    """'N,K,D;N,K,D' -> [(N, K, D), ...]."""
    shapes = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        values = [int(v) for v in part.split(",")]
        if len(values) != 3 or min(values) <= 0:
            raise ValueError(part)
        shapes.append(tuple(values))
    return shapes

