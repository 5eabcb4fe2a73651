"""VQGAN model pieces and losses against hand-computed or autograd references."""

import math

import pytest
import torch

from vqct.config import load_recipe
from vqct.errors import UserError
from vqct.models.discriminator import PatchDiscriminator
from vqct.models.losses import adaptive_weight, build_perceptual, conv_weight_grads, hinge_d_loss
from vqct.tokenizer import build_tokenizer
from vqct.train.engines import deepspeed_config
from vqct.train.schedule import warmup_cosine


def test_tiny_tokenizer_round_trip_shapes():
    cfg = load_recipe("vqgan_shapes")
    model = build_tokenizer(cfg)
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.reconstruction.shape == x.shape
    assert out.indices.shape == (2, 8, 8)  # f4 at 32 px
    # Each index is the nearest code (squared L2) to the encoder's output at its position.
    with torch.no_grad():
        z = model.quant_conv(model.encoder(x)).permute(0, 2, 3, 1).reshape(-1, cfg.model.embed_dim)
        nearest = torch.cdist(z.double(), model.quantizer.codebook.double()).argmin(1).reshape(2, 8, 8)
    assert torch.equal(out.indices, nearest)
    # Decoding the indices gives the reconstruction the forward pass gave.
    assert torch.allclose(model.detokenize(model.tokenize(x)), out.reconstruction, atol=1e-5)


def test_paper_config_is_f16_with_16x16_tokens():
    cfg = load_recipe("vqgan_shapes", ["model=paper", "data.image_size=256"])
    assert cfg.model.ch == 128 and cfg.model.ch_mult == [1, 1, 2, 2, 4]
    model = build_tokenizer(cfg)
    with torch.no_grad():
        assert model.tokenize(torch.randn(1, 3, 256, 256)).shape == (1, 16, 16)


def test_conv_weight_grads_of_two_losses_in_one_call_equal_autograd():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 3, 3, padding=1)
    x = torch.randn(2, 6, 8, 8)
    y = conv(x)
    losses = [(y**2).mean(), -(y * torch.randn_like(y)).mean()]
    grads_y = [torch.autograd.grad(loss, y, retain_graph=True)[0] for loss in losses]
    grads_w = [torch.autograd.grad(loss, conv.weight, retain_graph=True)[0] for loss in losses]
    ours = conv_weight_grads(x, grads_y, conv, conv.weight.shape)
    assert len(ours) == 2 and ours[0].shape == conv.weight.shape
    for got, want in zip(ours, grads_w):
        torch.testing.assert_close(got, want)
    assert not torch.allclose(ours[0], ours[1])  # each loss its own gradient, not a mix


def test_adaptive_weight_is_norm_ratio_clamped():
    a, b = torch.full((4,), 3.0), torch.full((4,), 1.0)
    assert adaptive_weight(a, b, 0.8).item() == pytest.approx(0.8 * 6.0 / (2.0 + 1e-4))
    assert adaptive_weight(a, torch.zeros(4), 1.0).item() == pytest.approx(1e4)


def test_hinge_loss_values():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    # real: relu(1-2)=0, relu(1-0.5)=0.5 -> 0.25; fake: relu(1-2)=0, relu(1+0)=1 -> 0.5
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (0.25 + 0.5))


def test_patch_discriminator_gives_patch_logits():
    disc = PatchDiscriminator(3, 16, 2)
    assert disc(torch.randn(2, 3, 32, 32)).shape == (2, 1, 6, 6)
    for param in disc.parameters():  # what DeepSpeed's bf16 mode does: params bf16, BN stats fp32
        param.data = param.data.bfloat16()
    assert disc(torch.randn(2, 3, 32, 32).bfloat16()).dtype == torch.bfloat16


def test_lpips_without_backbone_weights_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # an empty hub cache
    with pytest.raises(UserError, match="perceptual_weight=0"):
        build_perceptual("alex", "pretrained")


def test_lpips_loads_backbone_from_a_local_file(tmp_path):
    import torchvision

    # Random-initialised AlexNet weights stand in for the real ones (no hub here):
    # this checks the loading code, not perceptual quality.
    alexnet = torchvision.models.alexnet(weights=None)
    path = tmp_path / "alexnet.pth"
    torch.save(alexnet.state_dict(), path)
    lp = build_perceptual("alex", str(path))
    torch.testing.assert_close(lp.net.slice1[0].weight, alexnet.features[0].weight)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert lp(x, x).abs().max().item() == pytest.approx(0.0, abs=1e-6)
    assert lp(x, -x).mean().item() > 0


def test_warmup_cosine_schedule():
    f = lambda s: warmup_cosine(s, warmup_steps=10, max_steps=110, min_ratio=0.1)  # noqa: E731
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)


def test_deepspeed_config_follows_the_recipe():
    cfg = load_recipe("vqgan_shapes", ["trainer.zero_stage=3", "trainer.precision=bf16",
                                       "trainer.grad_accum=4", "optim.grad_clip=1.0"])
    ds = deepspeed_config(cfg.trainer, cfg.optim, cfg.data.batch_size)
    assert ds["zero_optimization"]["stage"] == 3 and ds["bf16"]["enabled"] is True
    assert ds["gradient_accumulation_steps"] == 4 and ds["gradient_clipping"] == 1.0
    assert ds["train_micro_batch_size_per_gpu"] == cfg.data.batch_size


def test_heads_do_not_change_the_vqgan_a_seed_builds():
    """vqgan_shapes and lgvq_shapes with one seed start from the same encoder, quantizer, decoder
    and discriminator: a comparison measures the method, not a different initialisation."""
    from vqct.models.discriminator import PatchDiscriminator
    from vqct.text.encoders import TextEncoder

    def build(recipe):
        cfg = load_recipe(recipe, ["seed=5"])
        torch.manual_seed(cfg.seed)
        text = TextEncoder(cfg.text.model, cfg.align.context_length) if cfg.align.enabled else None
        model = build_tokenizer(cfg, None, text)
        disc = PatchDiscriminator(cfg.model.in_channels, cfg.loss.disc_channels, cfg.loss.disc_layers)
        return model, disc, torch.rand(3)  # what the global stream gives next

    plain, plain_disc, plain_next = build("vqgan_shapes")
    lgvq, lgvq_disc, lgvq_next = build("lgvq_shapes")
    assert plain.align is None and lgvq.align is not None
    heads = {k for k in lgvq.state_dict() if k.startswith("align.")}
    assert {k: v for k, v in lgvq.state_dict().items() if k not in heads}.keys() == plain.state_dict().keys()
    for name, value in plain.state_dict().items():
        assert torch.equal(value, lgvq.state_dict()[name]), name
    for name, value in plain_disc.state_dict().items():
        assert torch.equal(value, lgvq_disc.state_dict()[name]), name
    assert torch.equal(plain_next, lgvq_next)


def test_the_heads_draw_dropout_from_their_own_stream():
    """A forward pass through the heads (dropout on) leaves the global random stream where it was."""
    from vqct.text.encoders import TextEncoder

    cfg = load_recipe("lgvq_shapes")
    text_encoder = TextEncoder(cfg.text.model, cfg.align.context_length)
    model = build_tokenizer(cfg, None, text_encoder).train()
    text = text_encoder.encode(["a red circle", "two blue squares"])
    masked = text["words"].clone()
    torch.manual_seed(0)
    model(torch.randn(2, 3, 32, 32), text, masked)
    after_heads = torch.rand(3)
    torch.manual_seed(0)
    model.align, heads = None, model.align
    model(torch.randn(2, 3, 32, 32))
    assert torch.equal(torch.rand(3), after_heads)
    model.align = heads
    images = torch.randn(2, 3, 32, 32)
    first = model(images, text, masked).align_losses["mtp"]
    second = model(images, text, masked).align_losses["mtp"]
    assert first != second  # the same input: only the heads' own stream moved on (dropout)
    model.eval()
    assert model(images, text, masked).align_losses["mtp"] == model(images, text, masked).align_losses["mtp"]
