"""Reconstruction grids: tiles upscaled by nearest to at least 128 px, rows labelled."""

import numpy as np
import torch

from vqct.eval.grid import reconstruction_grid


def test_a_32px_grid_has_128px_tiles_that_repeat_each_pixel_and_labels_on_the_left():
    torch.manual_seed(0)
    originals, recon = torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)
    grid = np.asarray(reconstruction_grid(originals, recon))
    label_w = grid.shape[1] - 4 * (128 + 4)
    assert grid.shape[0] == 2 * (128 + 4) and label_w > 60
    first = grid[:128, label_w:label_w + 128]
    expected = (originals[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    assert (first == np.kron(expected, np.ones((4, 4, 1), dtype=np.uint8))).all()  # nearest: 4x4 blocks
    second_row = grid[132:132 + 128, label_w:label_w + 128]
    assert (second_row[::4, ::4] == (recon[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()).all()
    labels = grid[:, :label_w]
    assert (labels < 128).any(axis=2)[:128].sum() > 50 and (labels < 128).any(axis=2)[132:].sum() > 50  # text


def test_large_images_are_not_scaled():
    grid = reconstruction_grid(torch.zeros(2, 3, 256, 256), torch.ones(2, 3, 256, 256))
    assert grid.size[1] == 2 * (256 + 4)
