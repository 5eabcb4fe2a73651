"""The baseline of `vqct bench step --baseline plain`: a VQGAN step written the way
taming-transformers writes it, from the same modules as vqct's step.

No DeepSpeed, no surrogate backward, no numerics guard: two `autograd.grad` calls at the
decoder's last layer for the adaptive GAN weight, one backward of the full generator loss,
`torch.optim.Adam`, then the discriminator's hinge loss and its own Adam step. The losses are
vqct's (L1 + codebook + hinge GAN with the adaptive weight), so the two steps do the same
arithmetic and their time ratio is the framework's cost.
"""

from __future__ import annotations

import contextlib

import torch

from vqct.config.schema import Config
from vqct.models.losses import hinge_d_loss
from vqct.train.step import LossWeights


class PlainStep:
    def __init__(self, gen: torch.nn.Module, disc: torch.nn.Module, cfg: Config,
                 last_layer: torch.nn.Module | None = None, gan_context=contextlib.nullcontext):
        """LAST_LAYER: the decoder's last layer (gen's own unless gen wraps it, as DDP does);
        GAN_CONTEXT: entered for the discriminator's pass inside the generator's loss."""
        betas = tuple(cfg.optim.betas)
        self.gen, self.disc = gen, disc
        self.last_layer, self.gan_context = last_layer or gen.last_layer, gan_context
        self.opt_g = torch.optim.Adam(gen.parameters(), lr=cfg.optim.lr, betas=betas)
        self.opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.optim.disc_lr or cfg.optim.lr, betas=betas)
        self.w = LossWeights.from_config(cfg.loss)

    def _adaptive_weight(self, nll: torch.Tensor, g_loss: torch.Tensor) -> torch.Tensor:
        last = self.last_layer.weight
        nll_grad = torch.autograd.grad(nll, last, retain_graph=True)[0]
        g_grad = torch.autograd.grad(g_loss, last, retain_graph=True)[0]
        weight = torch.norm(nll_grad) / (torch.norm(g_grad) + 1e-4)
        return torch.clamp(weight, 0.0, 1e4).detach() * self.w.disc

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        w = self.w
        out = self.gen(images)
        recon = out.reconstruction
        rec_loss = (images - recon).abs().mean()
        nll = w.rec * rec_loss
        with self.gan_context():
            g_loss = -self.disc(recon).mean()
        d_weight = self._adaptive_weight(nll, g_loss)
        loss = nll + d_weight * w.disc_factor * g_loss + w.codebook * out.quant_loss
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        d_loss = w.disc_factor * hinge_d_loss(self.disc(images.detach()), self.disc(recon.detach()))
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        return {"loss/rec_l1": rec_loss.detach(), "loss/disc": d_loss.detach()}
