"""NaN/Inf in a loss or a gradient: the update is skipped (weights and optimizer state
unchanged), counted, and too many in a row stop the run with a message that says where."""

import pytest
import torch

from vqct.config.compose import load_recipe
from vqct.train.numerics import NonFiniteGuard, NonFiniteLoss, NumericsFailure, check_losses, grads_finite


def test_check_losses_names_the_bad_term():
    check_losses({"loss/a": torch.tensor(1.0), "loss/b": torch.tensor(2.0)})
    with pytest.raises(NonFiniteLoss) as caught:
        check_losses({"loss/a": torch.tensor(1.0), "loss/b": torch.tensor(float("inf"))})
    assert caught.value.term == "loss/b"


def test_grads_finite_finds_nan_and_both_infinities_and_passes_huge_finite_values():
    grads = [torch.ones(3, 4), torch.full((5,), 3e38), torch.zeros(0)]  # 5 x 3e38 would overflow a sum
    assert grads_finite(grads) and grads_finite([])
    for bad in (float("nan"), float("inf"), -float("inf")):
        broken = [g.clone() for g in grads]
        broken[0][2, 1] = bad
        assert not grads_finite(broken), bad


def test_the_guard_counts_resets_and_stops_after_the_limit():
    guard = NonFiniteGuard(limit=3)
    guard.bad_loss("loss/rec_l1", 7, checkpoint_step=5)
    guard.bad_gradient(8, checkpoint_step=5)
    guard.good()  # a finite step in between: the run is not stuck
    guard.bad_loss("loss/codebook", 10, checkpoint_step=5)
    guard.bad_loss("loss/codebook", 11, checkpoint_step=5)
    with pytest.raises(NumericsFailure) as caught:
        guard.bad_loss("loss/codebook", 12, checkpoint_step=10)
    message = str(caught.value)
    assert "3 non-finite steps in a row" in message and "loss/codebook was not finite at step 12" in message
    assert "last good checkpoint: step 10" in message
    assert guard.metrics() == {"numerics/skipped_batches": 4.0, "numerics/skipped_steps": 1.0}


def _engines(stage: int):
    from vqct.models.discriminator import PatchDiscriminator
    from vqct.tokenizer import build_tokenizer
    from vqct.train.engines import build_engines

    cfg = load_recipe("vqgan_shapes", [f"trainer.zero_stage={stage}", "loss.perceptual_weight=0",
                                       "loss.disc_start=0", "data.batch_size=2", "optim.lr=1e-3"])
    torch.manual_seed(0)
    return build_engines(build_tokenizer(cfg, None, None), PatchDiscriminator(3, 8, 2), cfg.trainer, cfg.optim,
                         cfg.data.batch_size)


def _weights(engine) -> list[torch.Tensor]:
    return [p.detach().clone() for p in engine.module.parameters()]


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("stage", [0, 2])
def test_a_nan_batch_is_skipped_before_backward_then_training_goes_on(single_process_group, stage):
    from vqct.train.step import LossWeights, train_micro_step

    gen, disc = _engines(stage)
    weights = LossWeights(1.0, 0.0, 1.0, 0.8, 1.0, 0)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    bad = images.clone()
    bad[0, 0, 0, 0] = float("nan")
    before_g, before_d = _weights(gen), _weights(disc)
    with pytest.raises(NonFiniteLoss) as caught:
        train_micro_step(gen, disc, None, bad, 0, weights)
    assert caught.value.term.startswith("loss/")
    assert _same(before_g, _weights(gen)) and _same(before_d, _weights(disc))
    assert gen.global_steps == 0 and disc.global_steps == 0  # the engines never saw it
    metrics, _ = train_micro_step(gen, disc, None, images, 0, weights)
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert not _same(before_g, _weights(gen)) and gen.global_steps == 1


@pytest.mark.parametrize("stage", [0, 2])
def test_a_nan_gradient_with_finite_losses_skips_the_optimizer_step(single_process_group, stage):
    """ZeRO-2: DeepSpeed's overflow check. Stage 0 in fp32 has none: ours drops the grads."""
    from vqct.train.step import LossWeights, train_micro_step

    gen, disc = _engines(stage)
    weights = LossWeights(1.0, 0.0, 1.0, 0.8, 1.0, 10**6)  # no GAN: the generator alone
    param = next(p for p in gen.module.parameters() if p.requires_grad)
    hook = param.register_hook(lambda grad: torch.full_like(grad, float("nan")))
    before = _weights(gen)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    train_micro_step(gen, disc, None, images, 0, weights)
    assert gen.skipped_steps == 1
    after = _weights(gen)
    assert _same(before, after) and all(torch.isfinite(w).all() for w in after)
    hook.remove()
    train_micro_step(gen, disc, None, images, 0, weights)
    assert gen.skipped_steps == 1 and not _same(before, _weights(gen))
