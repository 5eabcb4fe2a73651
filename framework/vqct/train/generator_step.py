"""One stage-2 micro-step on its DeepSpeed engine: forward, the all-or-nothing finiteness check,
backward, step. Knows nothing of Ray; the worker (generator_loop.py) and `vqct bench generate`
both run it."""

from __future__ import annotations

import torch

from vqct.train.numerics import check_losses, skip_step_on_nonfinite_grads


def generator_micro_step(engine, codes: torch.Tensor, cond, drop: torch.Tensor | None) -> torch.Tensor:
    """The micro-batch's loss, detached. Raises NonFiniteLoss (every rank alike) before any
    update when the loss is NaN/Inf on some rank."""
    _, loss = engine(codes, cond, drop)
    check_losses({"loss/ce": loss})
    engine.backward(loss)
    with skip_step_on_nonfinite_grads(engine):
        engine.step()
    return loss.detach()
