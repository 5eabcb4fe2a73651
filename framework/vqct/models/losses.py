"""VQGAN losses: hinge GAN, the adaptive generator weight, and the LPIPS perceptual loss."""

from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqct.errors import UserError


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def generator_adv_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    return -logits_fake.mean()


def conv_weight_grads(layer_input: torch.Tensor, grad_outputs: list[torch.Tensor], conv: nn.Conv2d,
                      weight_shape: torch.Size) -> list[torch.Tensor]:
    """d loss / d conv.weight, for each of several losses, from the conv's input and each
    loss's gradient at its output.

    The same tensors autograd would give for the weight, computed without asking autograd
    for them: under ZeRO-3 the weight is a partitioned placeholder outside the forward, so
    only this form works at every ZeRO stage. One call for all the losses: a weight's output
    channel only sees its own output gradient channel, so stacking the gradients along the
    channels gives every loss's weight gradient from one larger (and faster) GEMM.
    """
    count = len(grad_outputs)
    stacked = torch.cat([g.float() for g in grad_outputs], dim=1)
    shape = torch.Size([weight_shape[0] * count, *weight_shape[1:]])
    grads = torch.nn.grad.conv2d_weight(
        layer_input.float(), shape, stacked,
        stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
    )
    return list(grads.split(weight_shape[0], dim=0))


def adaptive_weight(nll_grad: torch.Tensor, g_grad: torch.Tensor, disc_weight: float) -> torch.Tensor:
    """Taming's balance of reconstruction and GAN gradients at the decoder's last layer."""
    weight = torch.norm(nll_grad) / (torch.norm(g_grad) + 1e-4)
    return torch.clamp(weight, 0.0, 1e4).detach() * disc_weight


def _load_backbone(model: nn.Module, path: str) -> None:
    """Load a torchvision VGG16/AlexNet state_dict into LPIPS's sliced copy of `features`."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    mapped = {}
    for name, _ in model.net.named_parameters():
        index = name.split(".", 1)[1]  # "slice1.0.weight" -> "0.weight"
        mapped[name] = state[f"features.{index}"]
    missing = model.net.load_state_dict(mapped, strict=False)
    if missing.missing_keys:
        raise UserError(f"loss.lpips_backbone={path}: no weights for {missing.missing_keys[:3]}")


def build_perceptual(net: str, backbone: str) -> nn.Module:
    """A frozen LPIPS module, or a clear error when its backbone weights can't be had.

    backbone: "pretrained" (torchvision's weights, downloaded or from the torch hub cache),
    a path to a torchvision state_dict, or "random" (for tests of the code path only: a
    randomly initialised backbone is not a perceptual metric).
    """
    import lpips

    if net not in ("vgg", "alex", "squeeze"):
        raise UserError(f"loss.lpips_net='{net}' must be vgg, alex or squeeze")
    try:
        if backbone == "pretrained":
            model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=False, verbose=False)
        else:
            model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
            if backbone != "random":
                if not os.path.isfile(backbone):
                    raise UserError(f"loss.lpips_backbone: no file at {backbone}")
                _load_backbone(model, backbone)
    except UserError:
        raise
    except Exception as exc:
        hub = os.path.join(torch.hub.get_dir(), "checkpoints")
        raise UserError(
            f"LPIPS needs torchvision's pretrained {net} weights, which could not be loaded "
            f"({type(exc).__name__}): put them in {hub}, pass loss.lpips_backbone=PATH, "
            "or set loss.perceptual_weight=0"
        ) from None
    model.eval().requires_grad_(False)
    return model
