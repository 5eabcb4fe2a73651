"""vqct's training step computes what taming-transformers' loop computes, whatever it does
to go faster: the first losses and the gradients of the plain loop of bench/plain_step.py, the
same weights with DeepSpeed's one-rank all-reduce on or off, the same step under each speed
option, and metrics left on the device."""

import pytest
import torch

from vqct.config.compose import load_recipe

OVERRIDES = ["loss.perceptual_weight=0", "loss.disc_start=0", "data.batch_size=2", "data.image_size=32",
             "trainer.zero_stage=0", "optim.warmup_steps=0", "trainer.max_steps=1000000"]


def _build(cfg):
    from vqct.models.discriminator import PatchDiscriminator
    from vqct.tokenizer import build_tokenizer

    torch.manual_seed(cfg.seed)
    return build_tokenizer(cfg, None, None), PatchDiscriminator(3, cfg.loss.disc_channels, cfg.loss.disc_layers)


def _engines(cfg):
    from vqct.train.engines import build_engines

    return build_engines(*_build(cfg), cfg.trainer, cfg.optim, cfg.data.batch_size)


def _images() -> torch.Tensor:
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1


def _params(*modules) -> list[torch.Tensor]:
    return [p.detach().clone() for m in modules for p in m.parameters()]


def _capture_grads(optimizer, into: list) -> None:
    """Keep a copy of every gradient each time OPTIMIZER is about to step."""
    def hook(opt, args, kwargs):
        into.append([p.grad.detach().clone() for group in opt.param_groups for p in group["params"]])
    optimizer.register_step_pre_hook(hook)


def test_the_step_computes_the_plain_taming_loops_losses_and_gradients(single_process_group):
    """Surrogate backward, one conv weight-gradient call for the adaptive weight, DeepSpeed
    engines: none of it changes the arithmetic. Same first losses and the same gradients of
    both models up to float rounding (GAN on from the first step). Later steps drift apart by
    rounding only: Adam's first updates are lr * sign(g), so a near-zero gradient whose
    rounding flips its sign moves a weight by 2 lr either way."""
    from vqct.bench.plain_step import PlainStep
    from vqct.train.step import LossWeights, train_micro_step

    cfg = load_recipe("vqgan_shapes", OVERRIDES)
    gen, disc = _engines(cfg)
    plain = PlainStep(*_build(cfg), cfg)
    grads = {name: [] for name in ("ours_g", "ours_d", "theirs_g", "theirs_d")}
    for optimizer, name in ((gen.optimizer, "ours_g"), (disc.optimizer, "ours_d"),
                            (plain.opt_g, "theirs_g"), (plain.opt_d, "theirs_d")):
        _capture_grads(optimizer, grads[name])
    images = _images()
    metrics, _ = train_micro_step(gen, disc, None, images, 0, LossWeights.from_config(cfg.loss))
    theirs = plain(images)
    assert float(metrics["loss/rec_l1"]) == float(theirs["loss/rec_l1"])
    assert float(metrics["loss/disc"]) == float(theirs["loss/disc"])
    for model in ("g", "d"):
        ours, ref = grads[f"ours_{model}"][0], grads[f"theirs_{model}"][0]
        assert len(ours) == len(ref) > 5
        scale = max(float(g.abs().max()) for g in ref)
        assert scale > 0
        for a, b in zip(ours, ref):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * scale)


def test_zero0_on_one_rank_skips_the_allreduce_and_changes_no_bit(single_process_group):
    from vqct.train.step import LossWeights, train_micro_step

    cfg = load_recipe("vqgan_shapes", OVERRIDES)
    weights, images = LossWeights.from_config(cfg.loss), _images()
    runs = []
    for allreduce in (False, True):
        gen, disc = _engines(cfg)
        assert not gen.enable_backward_allreduce and not disc.enable_backward_allreduce
        gen.enable_backward_allreduce = disc.enable_backward_allreduce = allreduce
        losses = [train_micro_step(gen, disc, None, images, 0, weights)[0]["loss/total"] for _ in range(3)]
        runs.append((torch.stack(losses), _params(gen.module, disc.module)))
    assert torch.equal(runs[0][0], runs[1][0])
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


@pytest.mark.parametrize("clip", [0.0, 0.5])
def test_grad_clip_zero_means_no_clipping_not_deepspeeds_default(single_process_group, clip):
    cfg = load_recipe("vqgan_shapes", [*OVERRIDES, f"optim.grad_clip={clip}"])
    gen, disc = _engines(cfg)
    assert gen.gradient_clipping() == clip and disc.gradient_clipping() == clip


@pytest.mark.parametrize("stage", [1, 2])
def test_zero_stages_that_own_their_buffers_keep_the_allreduce(single_process_group, stage):
    cfg = load_recipe("vqgan_shapes", [*OVERRIDES, f"trainer.zero_stage={stage}"])
    gen, disc = _engines(cfg)
    assert gen.enable_backward_allreduce and disc.enable_backward_allreduce


def test_metrics_stay_on_the_device_until_read(single_process_group):
    from vqct.train.loop import read_figures
    from vqct.train.step import LossWeights, train_micro_step

    cfg = load_recipe("vqgan_shapes", OVERRIDES)
    gen, disc = _engines(cfg)
    metrics, indices = train_micro_step(gen, disc, None, _images(), 0, LossWeights.from_config(cfg.loss))
    assert {"loss/rec_l1", "loss/codebook", "loss/g_adv", "loss/d_weight", "loss/disc", "loss/total"} <= set(metrics)
    assert all(torch.is_tensor(v) and v.dim() == 0 and not v.requires_grad for v in metrics.values())
    read = read_figures(metrics)
    assert read == {k: float(v) for k, v in metrics.items()} and indices.shape == (2, 8, 8)


# ---- speed and memory options: each changes how the step runs, not what it computes --------
def _first_step(overrides: list[str]):
    """(first metrics, generator gradients, discriminator gradients, generator weights after
    the step) of one micro-step under the recipe with OVERRIDES."""
    from vqct.train.engines import prepare_batch
    from vqct.train.step import LossWeights, train_micro_step

    cfg = load_recipe("vqgan_shapes", [*OVERRIDES, *overrides])
    gen, disc = _engines(cfg)
    grads = {"g": [], "d": []}
    _capture_grads(gen.optimizer, grads["g"])
    _capture_grads(disc.optimizer, grads["d"])
    metrics, _ = train_micro_step(gen, disc, None, prepare_batch(_images(), cfg.trainer), 0,
                                  LossWeights.from_config(cfg.loss))
    return metrics, grads["g"][0], grads["d"][0], _params(gen.module)


def _assert_same_arithmetic(got, want, weights_atol: float = 0.0):
    for key in ("loss/rec_l1", "loss/codebook", "loss/g_adv", "loss/disc"):
        torch.testing.assert_close(got[0][key], want[0][key], rtol=1e-5, atol=1e-7)
    for index in (1, 2):
        scale = max(float(g.abs().max()) for g in want[index])
        for a, b in zip(got[index], want[index]):
            torch.testing.assert_close(a.contiguous(), b.contiguous(), rtol=1e-4, atol=1e-5 * scale)
    if weights_atol:
        for a, b in zip(got[3], want[3]):
            torch.testing.assert_close(a.contiguous(), b.contiguous(), rtol=0, atol=weights_atol)


@pytest.fixture(scope="module")
def base_step(single_process_group):
    return _first_step([])


@pytest.mark.parametrize("option", ["trainer.channels_last=true", "trainer.activation_checkpointing=true",
                                    "model.attention=math", "optim.adam=foreach", "optim.adam=fused",
                                    "optim.adam=single"])
def test_a_speed_option_computes_the_same_step(base_step, option):
    got = _first_step([option])
    # The Adam implementations get the very same gradients, so the weights after the step must
    # agree to rounding. (Not so for the others: a bias before a GroupNorm has a gradient of 0
    # plus rounding noise, and Adam's first step moves it by lr times the noise's sign.)
    _assert_same_arithmetic(got, base_step, weights_atol=1e-6 if option.startswith("optim.adam") else 0.0)


def test_activation_checkpointing_recomputes_blocks_in_backward(single_process_group):
    """It is on where it should be: the blocks' forwards run again during backward."""
    from vqct.models.vqgan import ResnetBlock
    from vqct.train.engines import prepare_models

    cfg = load_recipe("vqgan_shapes", [*OVERRIDES, "trainer.activation_checkpointing=true"])
    tokenizer, _ = _build(cfg)
    calls = []
    for module in tokenizer.modules():
        if isinstance(module, ResnetBlock):  # a pre-hook: recomputation may stop before a block's end
            module.register_forward_pre_hook(lambda *args: calls.append(1))

    def forward_and_backward_calls() -> tuple[int, int]:
        calls.clear()
        out = tokenizer(_images()).reconstruction.mean()
        forward = len(calls)
        out.backward()
        return forward, len(calls) - forward

    forward, in_backward = forward_and_backward_calls()
    assert forward > 0 and in_backward == 0
    prepare_models(cfg.trainer, tokenizer)
    assert forward_and_backward_calls() == (forward, forward)  # every block, once more


def test_compiled_models_compute_the_same_step(base_step):
    """torch.compile inside the engines (aot_eager: dynamo and AOT autograd, no code generation,
    so that the test stays short on a CPU; inductor is what runs are measured with)."""
    got = _first_step(["trainer.compile=true", "trainer.compile_backend=aot_eager"])
    _assert_same_arithmetic(got, base_step)


def test_channels_last_reaches_the_activations(single_process_group):
    from vqct.train.engines import prepare_batch

    cfg = load_recipe("vqgan_shapes", [*OVERRIDES, "trainer.channels_last=true"])
    tokenizer, _ = _build(cfg)
    out = tokenizer(prepare_batch(_images(), cfg.trainer))
    assert out.decoder_last_input.is_contiguous(memory_format=torch.channels_last)
    assert not tokenizer(_images()).decoder_last_input.is_contiguous(memory_format=torch.channels_last)


def test_the_adam_and_compile_options_reach_the_engines(single_process_group):
    """The options above compute the same step; this checks that they were applied at all."""
    cfg = load_recipe("vqgan_shapes", [*OVERRIDES, "optim.adam=fused", "trainer.compile=true",
                                       "trainer.compile_backend=aot_eager"])
    gen, disc = _engines(cfg)
    assert gen.optimizer.defaults["fused"] is True and disc.optimizer.defaults["fused"] is True
    assert gen.is_compiled and disc.is_compiled
    cfg = load_recipe("vqgan_shapes", [*OVERRIDES, "optim.adam=foreach"])
    assert _engines(cfg)[0].optimizer.defaults["foreach"] is True
    plain = _engines(load_recipe("vqgan_shapes", OVERRIDES))[0]
    assert not plain.is_compiled and plain.optimizer.defaults["fused"] is None
