"""One VQGAN training micro-step on two DeepSpeed engines: generator, then discriminator.

Knows nothing of Ray or MLflow: takes a batch, returns its metrics and code indices, both
still on the device. The one host read per micro-step is check_losses' decision whether to
backward at all (docs/performance.md says why it cannot go).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vqct.config.schema import AlignConfig, LossConfig
from vqct.models.losses import adaptive_weight, conv_weight_grads, generator_adv_loss, hinge_d_loss
from vqct.train.numerics import check_losses, skip_step_on_nonfinite_grads


@dataclass
class LossWeights:
    rec: float
    perceptual: float
    codebook: float
    disc: float
    disc_factor: float
    disc_start: int
    align: dict = field(default_factory=dict)  # alignment loss name -> weight (AlignConfig.weights)

    @classmethod
    def from_config(cls, loss: LossConfig, align: AlignConfig | None = None) -> "LossWeights":
        return cls(loss.rec_weight, loss.perceptual_weight, loss.codebook_weight, loss.disc_weight,
                   loss.disc_factor, loss.disc_start, align.weights() if align is not None else {})


def _weight_shape(param: torch.nn.Parameter) -> torch.Size:
    return getattr(param, "ds_shape", param.shape)  # ZeRO-3 keeps the full shape in ds_shape


def generator_losses(gen, disc, perceptual, images: torch.Tensor, step: int, w: LossWeights,
                     text: dict | None = None, masked: torch.Tensor | None = None):
    """Generator forward and losses; returns (output, metrics, surrogate to backward).

    The image-space losses are taken on a detached copy of the
    reconstruction, and their gradient is pushed back through the generator with one
    surrogate backward: d(surrogate)/d(params) equals d(loss)/d(params) exactly.

    Why: the adaptive GAN weight needs the gradients of two losses at the decoder's last
    layer. Asking autograd for them through the engine's output would fire DeepSpeed's
    backward hooks (a ZeRO reduction) before the real backward; on the detached copy it
    costs nothing extra and every loss is computed once.
    """
    out = gen(images, text, masked) if text is not None else gen(images)
    leaf = out.reconstruction.detach().to(images.dtype).requires_grad_(True)
    x = images.float()
    rec_loss = (x - leaf.float()).abs().mean()
    p_loss = perceptual(x, leaf.float()).mean() if perceptual is not None and w.perceptual > 0 else leaf.new_zeros((), dtype=torch.float32)
    nll = w.rec * rec_loss + w.perceptual * p_loss
    (grad,) = torch.autograd.grad(nll, leaf)
    total = nll.detach() + w.codebook * out.quant_loss.detach()
    metrics = {"loss/rec_l1": rec_loss, "loss/perceptual": p_loss, "loss/codebook": out.quant_loss}
    if step >= w.disc_start and w.disc_factor > 0:
        disc.module.requires_grad_(False)  # D's own gradients belong to the D step
        g_loss = generator_adv_loss(disc.module(leaf).float())
        (g_grad,) = torch.autograd.grad(g_loss, leaf)
        disc.module.requires_grad_(True)
        layer = gen.module.last_layer
        shape = _weight_shape(layer.weight)
        layer_in = out.decoder_last_input.detach()
        d_weight = adaptive_weight(*conv_weight_grads(layer_in, [grad, g_grad], layer, shape), w.disc)
        grad = grad + d_weight * w.disc_factor * g_grad
        total = total + d_weight * w.disc_factor * g_loss.detach()
        metrics.update({"loss/g_adv": g_loss, "loss/d_weight": d_weight})
    surrogate = (out.reconstruction.float() * grad.float()).sum() + w.codebook * out.quant_loss
    for name, value in out.align_losses.items():  # they reach the codes through the engine's graph
        surrogate = surrogate + w.align.get(name, 0.0) * value
        total = total + w.align.get(name, 0.0) * value.detach()
        metrics[f"loss/{name}"] = value
    metrics["loss/total"] = total
    return out, metrics, surrogate


def discriminator_losses(disc, images: torch.Tensor, reconstruction: torch.Tensor, step: int,
                         w: LossWeights) -> tuple[dict, torch.Tensor | None]:
    """Discriminator forward on the (detached) reconstruction; (metrics, loss or None)."""
    if step < w.disc_start or w.disc_factor <= 0:
        return {}, None
    logits_real = disc(images.detach()).float()
    logits_fake = disc(reconstruction.detach()).float()
    d_loss = w.disc_factor * hinge_d_loss(logits_real, logits_fake)
    return {"loss/disc": d_loss, "disc/logits_real": logits_real.mean(),
            "disc/logits_fake": logits_fake.mean()}, d_loss


def _update(engine, loss: torch.Tensor) -> None:
    engine.backward(loss)
    with skip_step_on_nonfinite_grads(engine):
        engine.step()


def train_micro_step(gen, disc, perceptual, images: torch.Tensor, step: int, w: LossWeights,
                     text: dict | None = None, masked: torch.Tensor | None = None):
    """Returns (metrics as detached 0-d tensors on the device, code indices of this
    micro-batch): reading them is the caller's choice (the loop reads at log steps). Raises
    NonFiniteLoss, on every rank alike, when a loss term is NaN/Inf (nothing updated)."""
    out, metrics, surrogate = generator_losses(gen, disc, perceptual, images, step, w, text, masked)
    d_metrics, d_loss = discriminator_losses(disc, images, out.reconstruction, step, w)
    metrics.update(d_metrics)
    # Every term is checked before either backward (the first collective): all or nothing.
    check_losses({k: v for k, v in metrics.items() if k.startswith("loss/")})
    _update(gen, surrogate)
    if d_loss is not None:
        _update(disc, d_loss)
    return {k: v.detach() for k, v in metrics.items()}, out.indices.detach()
