"""Codebook usage over a sliding window of steps, and perplexity of code counts."""

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
    """Fraction of codes hit at least once in the last WINDOW steps."""

    def __init__(self, codebook_size: int, window: int):
        self.codebook_size = codebook_size
        self.window: deque[torch.Tensor] = deque(maxlen=window)
        self.total = torch.zeros(codebook_size, dtype=torch.long)

    def update(self, counts: torch.Tensor) -> None:
        counts = counts.detach().to("cpu", torch.long)
        if len(self.window) == self.window.maxlen:
            self.total -= self.window[0]
        self.window.append(counts)
        self.total += counts

    @property
    def usage(self) -> float:
        return float((self.total > 0).sum()) / self.codebook_size

    @property
    def window_perplexity(self) -> float:
        return perplexity(self.total)

    def restore(self, window: list[torch.Tensor]) -> None:
        """Refill the window from saved per-step counts (oldest first)."""
        self.window.clear()
        self.total.zero_()
        for counts in window:
            self.update(counts)
