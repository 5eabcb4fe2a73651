"""Codebook statistics: usage (share of codes hit) and perplexity of code counts, over a
sliding window of steps in training and over a whole pass in evaluation."""

from __future__ import annotations

from collections import deque

import torch


def perplexity(counts: torch.Tensor) -> float:
    """exp(entropy) of the code distribution given by COUNTS: K when uniform, 1 when collapsed."""
    total = counts.sum()
    if total <= 0:
        return 0.0
    p = counts.double() / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


class CodebookUsage:
    """Code counts summed over the last WINDOW steps (`total`), for usage_stats."""

    def __init__(self, codebook_size: int, window: int, device: torch.device | str = "cpu"):
        self.codebook_size = codebook_size
        self.window: deque[torch.Tensor] = deque(maxlen=window)
        # On the training device: counting a step's codes reads nothing back to the host.
        self.total = torch.zeros(codebook_size, dtype=torch.long, device=device)

    def update(self, counts: torch.Tensor) -> None:
        counts = counts.detach().to(self.total.device, torch.long)
        if len(self.window) == self.window.maxlen:
            self.total -= self.window[0]
        self.window.append(counts)
        self.total += counts

    def restore(self, window: list[torch.Tensor]) -> None:
        """Refill the window from saved per-step counts (oldest first)."""
        self.window.clear()
        self.total.zero_()
        for counts in window:
            self.update(counts)


class ReportsUsage:
    """Usage statistics for a quantizer with one codebook group ({'codes': K}) or several
    (vqct: {'adj': A, 'noun': N}); the one place that tells the two cases apart."""

    groups: dict[str, int]

    def usage_stats(self, counts: dict[str, torch.Tensor],
                    perplexity_counts: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
        """Usage from COUNTS per group, perplexity from PERPLEXITY_COUNTS (default COUNTS).
        One group: codebook_usage, perplexity. Several: codebook_usage_<group> and
        perplexity_<group> for each, and codebook_usage over all codes."""
        perplexity_counts = counts if perplexity_counts is None else perplexity_counts
        hit = {name: float((c > 0).sum()) for name, c in counts.items()}
        if list(self.groups) == ["codes"]:
            return {"codebook_usage": hit["codes"] / self.groups["codes"],
                    "perplexity": perplexity(perplexity_counts["codes"])}
        out = {}
        for name, size in self.groups.items():
            out[f"codebook_usage_{name}"] = hit[name] / size
            out[f"perplexity_{name}"] = perplexity(perplexity_counts[name])
        out["codebook_usage"] = sum(hit.values()) / sum(self.groups.values())
        return out


def as_metrics(stats: dict[str, float]) -> dict[str, float]:
    """usage_stats keys as MLflow metric names: codebook_usage_adj -> codebook/usage_adj."""
    return {f"codebook/{key.removeprefix('codebook_')}": value for key, value in stats.items()}
