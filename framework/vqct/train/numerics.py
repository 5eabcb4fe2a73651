"""Non-finite losses and gradients: skip the update on every rank, count it, and stop
the run after too many in a row.

A loss term that is NaN or Inf on any rank is caught before backward; the ranks agree
through one all-reduce, so all of them skip together (a rank that ran its ZeRO
reduction alone would hang the others). Gradients that overflow with finite losses are
left to DeepSpeed's own overflow check, which skips the step on all ranks in every ZeRO
stage and precision but one (stage 0, fp32: see skip_step_on_nonfinite_grads).
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

from vqct.errors import RunStopped


class NonFiniteLoss(Exception):
    """This micro-batch's loss TERM is NaN or Inf on some rank: nothing was updated."""

    def __init__(self, term: str):
        super().__init__(f"{term} is not finite")
        self.term = term


class NumericsFailure(RunStopped):
    """Too many consecutive non-finite steps: training cannot go on as configured."""


def check_losses(terms: dict[str, torch.Tensor]) -> None:
    """Raise NonFiniteLoss (on every rank alike) when any term is NaN/Inf on any rank."""
    names = sorted(terms)
    device = next((v.device for v in terms.values() if torch.is_tensor(v)), torch.device("cpu"))
    # One flag tensor, one all-reduce, one host sync: the highest-numbered bad term wins.
    bad = torch.stack([~torch.isfinite(torch.as_tensor(terms[name], device=device).detach()).all()
                       for name in names])
    code = (bad.long() * torch.arange(1, len(names) + 1, device=device)).max().reshape(1)
    if dist.is_initialized():
        dist.all_reduce(code, op=dist.ReduceOp.MAX)
    code = int(code)
    if code:
        raise NonFiniteLoss(names[code - 1])


def grads_finite(grads: list[torch.Tensor]) -> bool:
    """True when no gradient holds a NaN or an Inf: one host read for all of them.

    Each gradient's min and max are non-finite when any element is (max propagates NaN),
    the reduce-then-test form of DeepSpeed's own `has_inf_or_nan`, in one pass
    (`torch.aminmax`) where that function takes two (max, then min: 32 ms against 12 ms).
    Why not `isfinite(g).all()`: it writes a bool tensor the size of each
    gradient and reads it again, ~10x the time (100 ms against 12 ms per step for the
    paper model's 68 M parameters on 2 CPU cores)."""
    ends = [end for g in grads if g.numel() for end in torch.aminmax(g)]
    return not ends or bool(torch.isfinite(torch.stack(ends)).all())


@contextlib.contextmanager
def skip_step_on_nonfinite_grads(engine):
    """Wrap engine.step(). ZeRO stage 0 in fp32 hands a plain torch optimizer already
    all-reduced .grad tensors and has no overflow check of its own: when any gradient is
    NaN/Inf, zero them (so that clipping still works), turn this one optimizer.step into
    a no-op, and raise the `overflow` flag that DeepSpeed reads after every step, so that
    DeepSpeed itself counts the skip and holds the lr schedule, as in the other stages."""
    optimizer = engine.optimizer
    params = [p for p in engine.module.parameters() if p.grad is not None]
    if (engine.zero_optimization_stage() != 0 or engine.bfloat16_enabled()
            or not engine.is_gradient_accumulation_boundary()
            or not params or grads_finite([p.grad for p in params])):
        yield
        return
    for p in params:
        p.grad.zero_()
    wrapped = optimizer.__dict__.get("step")  # the lr scheduler's own wrapper, when there is one
    optimizer.step = lambda *args, **kwargs: None  # for this call only
    optimizer.overflow = True
    try:
        yield
    finally:
        del optimizer.overflow
        if wrapped is None:
            del optimizer.step
        else:
            optimizer.step = wrapped


class NonFiniteGuard:
    """Counts skipped micro-batches (bad loss) and skipped optimizer steps (bad gradient);
    raises NumericsFailure after LIMIT bad ones in a row."""

    def __init__(self, limit: int, skipped_batches: int = 0, skipped_steps: int = 0):
        self.limit = limit
        self.skipped_batches = skipped_batches
        self.skipped_steps = skipped_steps
        self.consecutive = 0

    def bad_loss(self, term: str, step: int, checkpoint_step: int | None) -> None:
        self.skipped_batches += 1
        self._bad(f"{term} was not finite at step {step}", checkpoint_step)

    def bad_gradient(self, step: int, checkpoint_step: int | None) -> None:
        self.skipped_steps += 1
        self._bad(f"a gradient was not finite at step {step} (the losses were)", checkpoint_step)

    def good(self) -> None:
        self.consecutive = 0

    def _bad(self, what: str, checkpoint_step: int | None) -> None:
        self.consecutive += 1
        if self.consecutive >= self.limit:
            last = f"step {checkpoint_step}" if checkpoint_step is not None else "none yet"
            raise NumericsFailure(
                f"{self.consecutive} non-finite steps in a row (trainer.max_bad_steps={self.limit}); "
                f"last: {what}; last good checkpoint: {last}. Lower optim.lr, set optim.grad_clip, "
                "or check the data, then resume")

    def metrics(self) -> dict[str, float]:
        return {"numerics/skipped_batches": float(self.skipped_batches),
                "numerics/skipped_steps": float(self.skipped_steps)}
