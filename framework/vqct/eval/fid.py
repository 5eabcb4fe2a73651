"""Inception FID (rFID between held-out images and their reconstructions; FID of generated
scenes against real ones) through torchmetrics' FID on torch-fidelity's Inception-v3, only
when its weights are already on disk (no downloads:
cluster nodes are often offline, and a silent download would hang the evaluation)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's file name


def default_weights_path() -> Path:
    override = os.environ.get("VQCT_INCEPTION_WEIGHTS")
    if override:
        return Path(override).expanduser()
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE


def weights_path(weights: str | Path | None) -> Path:
    """The Inception weights file a command uses: WEIGHTS where given, else the default."""
    return Path(weights).expanduser() if weights else default_weights_path()


class InceptionFID:
    """Inception FID between a real and a generated set; `compute()` returns it, or the reason
    it was skipped (no weights file: nothing is downloaded)."""

    def __init__(self, weights: str | Path | None, device):
        self.path = weights_path(weights)
        self.metric = None
        if self.path.is_file():
            from torchmetrics.image.fid import FrechetInceptionDistance

            self.metric = FrechetInceptionDistance(feature=2048, normalize=True,
                                                   feature_extractor_weights_path=str(self.path)).to(device)

    @property
    def skipped(self) -> str | None:
        return None if self.metric is not None else f"skipped: no Inception weights at {self.path}"

    def add(self, images_unit: torch.Tensor, real: bool) -> None:
        """Images in [0, 1], (B, 3, H, W), to the real or the generated side."""
        if self.metric is not None:
            self.metric.update(images_unit, real=real)

    def compute(self) -> float | str:
        if self.metric is None:
            return self.skipped
        return float(self.metric.compute())


class ReconstructionFID(InceptionFID):
    """rFID: held-out images on the real side, their reconstructions on the other."""

    def update(self, real_unit: torch.Tensor, recon_unit: torch.Tensor) -> None:
        self.add(real_unit, real=True)
        self.add(recon_unit, real=False)
