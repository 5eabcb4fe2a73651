"""Held-out reconstruction quality: PSNR, SSIM and L1 through torchmetrics.

Every rank evaluates the same number of batches (ZeRO-3 forwards are collective) and
torchmetrics gathers the states across ranks when torch.distributed is initialized.
"""

from __future__ import annotations

from itertools import islice

import torch


def to_unit(images: torch.Tensor) -> torch.Tensor:
    return ((images.float() + 1.0) / 2.0).clamp_(0.0, 1.0)


class ReconstructionMetrics:
    """PSNR and SSIM on [0, 1], and L1 on the [-1, 1] scale of the training L1."""

    def __init__(self, device):
        # Imported here: torchmetrics' package import takes seconds (it loads every metric),
        # which `vqct eval` should not spend before it has checked its arguments.
        from torchmetrics import MeanAbsoluteError
        from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

        self.psnr = PeakSignalNoiseRatio(data_range=1.0).to(device)
        self.ssim = StructuralSimilarityIndexMeasure(data_range=1.0).to(device)
        self.l1 = MeanAbsoluteError().to(device)

    def update(self, images: torch.Tensor, recon: torch.Tensor) -> None:
        """IMAGES and their reconstructions RECON, both in [-1, 1]."""
        self.psnr.update(to_unit(recon), to_unit(images))
        self.ssim.update(to_unit(recon), to_unit(images))
        self.l1.update(recon.float(), images.float())

    def compute(self) -> dict[str, float]:
        return {"psnr": float(self.psnr.compute()), "ssim": float(self.ssim.compute()),
                "l1": float(self.l1.compute())}


@torch.no_grad()
def evaluate_reconstruction(model, batches, num_batches: int, device, dtype) -> tuple[dict, tuple | None]:
    """MODEL maps images to an output with `.reconstruction`; BATCHES yields vqct Batches.
    Returns (the metrics, the first batch's first 8 (images, reconstructions) or None)."""
    metrics = ReconstructionMetrics(device)
    was_training = model.training
    model.eval()
    first = None
    for batch in islice(batches, num_batches):
        images = batch.images.to(device)
        recon = model(images.to(dtype)).reconstruction
        metrics.update(images, recon)
        if first is None:
            first = (images[:8].cpu(), recon[:8].float().cpu())
    model.train(was_training)
    return metrics.compute(), first
