"""Image completion scored against the real pictures: the generator was given the top half of
each picture's codes and wrote the rest, so the bottom half is compared with the real picture of
the same sample key. The top half's PSNR is reported beside it: it is the tokenizer's own
reconstruction of the given half, the level the generated half is read against."""

from __future__ import annotations

import math

import numpy as np

from vqct.eval.scene_judge import AskedScene


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 pictures (or parts of them), peak 255."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def completion_scores(pictures: list[AskedScene], real: dict[str, np.ndarray]) -> dict:
    """Mean per-picture PSNR of the bottom (generated) and top (given) halves against REAL
    (pictures by sample key); pictures without a real counterpart are counted, not scored."""
    bottom, top, unmatched = [], [], 0
    for scene in pictures:
        truth = real.get(scene.key)
        if truth is None or truth.shape != scene.picture.shape:
            unmatched += 1
            continue
        half = truth.shape[0] // 2
        bottom.append(min(psnr(scene.picture[half:], truth[half:]), 100.0))
        top.append(min(psnr(scene.picture[:half], truth[:half]), 100.0))
    if not bottom:
        return {"completion_scored": 0, "completion_unmatched": unmatched}
    return {"completion_psnr_generated_half": float(np.mean(bottom)),
            "completion_psnr_given_half": float(np.mean(top)),
            "completion_scored": len(bottom), "completion_unmatched": unmatched}
