"""`vqct bench gcn`: the transfer network's graph aggregation against torch.sparse.mm and an
index_add_ scatter, forward and forward + backward, on random graphs of VQCT's size and of
a LAION-scale vocabulary, all measured in this run."""

from __future__ import annotations

import sys

import torch

from vqct.bench.measure import device_name, measure, ratio
from vqct_kernels.graph import aggregate_index_add, aggregate_sparse, gcn_aggregate, normalized_graph

# (name, nodes, edges): VQCT's vocabulary size, and a LAION-scale one.
FULL_GRAPHS = [("vqct", 6_000, 60_000), ("laion", 100_000, 10_000_000)]
CPU_GRAPHS = [("vqct", 6_000, 60_000), ("laion-scaled", 100_000, 1_000_000)]
WIDTHS = (64, 256)


def random_graph(nodes: int, edges: int, device) -> object:
    g = torch.Generator(device="cpu").manual_seed(0)
    index = torch.randint(0, nodes, (2, edges), generator=g)
    weight = torch.rand(edges, generator=g) + 0.1
    return normalized_graph(index.to(device), weight.to(device), nodes)


def _forward_backward(fn, graph, x):
    def run():
        x.grad = None
        fn(graph, x).sum().backward()
    return run


def bench_graph(name: str, nodes: int, edges: int, width: int, device, reps: int) -> dict:
    graph = random_graph(nodes, edges, device)
    x = torch.randn(nodes, width, device=device, requires_grad=True)
    methods = {"ours": gcn_aggregate, "sparse_mm": aggregate_sparse, "index_add": aggregate_index_add}
    row = {"graph": name, "nodes": nodes, "edges": int(graph.col.numel()), "width": width}
    for method, fn in methods.items():
        with torch.no_grad():
            row[method] = measure(lambda fn=fn: fn(graph, x), device, reps)
        row[f"{method}_fwd_bwd"] = measure(_forward_backward(fn, graph, x), device, reps)
    for method in ("sparse_mm", "index_add"):
        row[f"speedup_vs_{method}"] = ratio(row[method], row["ours"])
        row[f"speedup_vs_{method}_fwd_bwd"] = ratio(row[f"{method}_fwd_bwd"], row["ours_fwd_bwd"])
    return row


def bench_gcn(full: bool, reps: int, graphs: list[tuple[str, int, int]] | None = None,
              widths: tuple[int, ...] = WIDTHS) -> dict:
    from tqdm import tqdm

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if graphs is None:
        graphs = FULL_GRAPHS if device.type == "cuda" or full else CPU_GRAPHS
    cases = [(g, w) for g in graphs for w in widths]
    rows = [bench_graph(*g, w, device, reps) for g, w in tqdm(cases, desc="bench gcn", file=sys.stderr)]
    return {"bench": "gcn", "device": device_name(device),
            "ours": "triton" if device.type == "cuda" else "torch.sparse (same as sparse_mm on CPU)",
            "torch": torch.__version__, "results": rows}
