"""Held-out reconstruction quality: PSNR, SSIM and L1 through torchmetrics.

Every rank evaluates the same number of batches (ZeRO-3 forwards are collective) and
torchmetrics gathers the states across ranks when torch.distributed is initialized.
"""

from __future__ import annotations

from itertools import islice

import torch
from torchmetrics import MeanAbsoluteError
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure


def to_unit(images: torch.Tensor) -> torch.Tensor:
    return ((images.float() + 1.0) / 2.0).clamp_(0.0, 1.0)


@torch.no_grad()
def evaluate_reconstruction(model, batches, num_batches: int, device, dtype) -> dict:
    """MODEL maps images to an output with `.reconstruction`; BATCHES yields vqct Batches."""
    psnr = PeakSignalNoiseRatio(data_range=1.0).to(device)
    ssim = StructuralSimilarityIndexMeasure(data_range=1.0).to(device)
    l1 = MeanAbsoluteError().to(device)  # on the [-1, 1] scale, like the training L1
    was_training = model.training
    model.eval()
    first = None
    for batch in islice(batches, num_batches):
        images = batch.images.to(device)
        recon = model(images.to(dtype)).reconstruction
        psnr.update(to_unit(recon), to_unit(images))
        ssim.update(to_unit(recon), to_unit(images))
        l1.update(recon.float(), images.float())
        if first is None:
            first = (images[:8].cpu(), recon[:8].float().cpu())
    model.train(was_training)
    return {"psnr": float(psnr.compute()), "ssim": float(ssim.compute()), "l1": float(l1.compute())}, first
