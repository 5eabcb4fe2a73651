"""Caption features for the caption condition: a frozen text model's token features, padded or
cut to the generator's fixed number of caption tokens (LlamaGen feeds T5's the same way)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def text_width(encoder) -> int:
    """Width of the text model's token features (its hidden size)."""
    return encoder.model.config.hidden_size


@torch.no_grad()
def caption_features(encoder, captions: list[str], tokens: int) -> dict[str, torch.Tensor]:
    """-> {"features": (B, tokens, width), "mask": (B, tokens)}: real tokens first, zeros after."""
    out = encoder.encode(captions)
    feats, mask = out["tokens"][:, :tokens], out["mask"][:, :tokens]
    pad = tokens - feats.shape[1]
    if pad > 0:
        feats = F.pad(feats, (0, 0, 0, pad))
        mask = F.pad(mask, (0, pad))
    return {"features": feats.float(), "mask": mask}
