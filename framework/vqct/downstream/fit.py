"""The one training loop of the downstream models: AdamW, linear warmup then cosine decay,
a fixed number of steps over batches drawn with a seeded generator (same seed, same model),
with a progress bar. Small models on evaluation-sized sets need nothing more: no DeepSpeed,
no Ray (one process trains a downstream model in minutes on two CPU cores)."""

from __future__ import annotations

import math
from typing import Callable

import torch
from tqdm import tqdm


def cosine_lr(step: int, steps: int, warmup: int) -> float:
    """The learning rate's factor at STEP (0-based)."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def fit(model: torch.nn.Module, loss_of: Callable[[torch.Tensor], torch.Tensor], count: int, steps: int,
        batch_size: int, lr: float, seed: int, desc: str, weight_decay: float = 0.01,
        precision: str = "fp32") -> list[float]:
    """Train MODEL for STEPS steps; LOSS_OF(indices) is a batch's loss given the indices of its
    samples among COUNT. PRECISION bf16 runs each forward under autocast (the matrix products
    in bf16, the weights and AdamW in fp32). Returns the loss of every step."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_lr(s, steps, max(1, steps // 20)))
    draw = torch.Generator().manual_seed(seed)
    losses = []
    device = params[0].device.type
    model.train()
    with tqdm(range(steps), desc=desc, unit="step", mininterval=2.0) as bar:
        for _ in bar:
            batch = torch.randint(count, (batch_size,), generator=draw)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = loss_of(batch).float()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            if len(losses) % 50 == 0:
                bar.set_postfix(loss=f"{sum(losses[-50:]) / 50:.3f}")
    model.eval()
    return losses
