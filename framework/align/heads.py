"""The alignment heads a recipe enables (LG-VQ, VQCT-VLT), as one module in the tokenizer."""

from __future__ import annotations

import torch
import torch.nn as nn

from vqct.config.schema import AlignConfig


class AlignHeads(nn.Module):
    def __init__(self, lgvq: nn.Module | None, vlt: nn.Module | None):
        super().__init__()
        self.lgvq, self.vlt = lgvq, vlt

    def forward(self, codes: torch.Tensor, text: dict, masked: torch.Tensor | None) -> dict[str, torch.Tensor]:
        losses = {}
        if self.lgvq is not None:
            losses.update(self.lgvq(codes, text, masked))
        if self.vlt is not None:
            losses.update(self.vlt(codes, text))
        return losses


def build_align(cfg: AlignConfig, grid_side: int, code_channels: int, text_encoder) -> AlignHeads | None:
    """The heads CFG enables, for a GRID_SIDE x GRID_SIDE map of CODE_CHANNELS-wide codes."""
    if not cfg.enabled:
        return None
    if text_encoder is None:
        raise ValueError("the alignment heads need the text encoder")
    from vqct.align.lgvq import LGVQHeads
    from vqct.align.vlt import VisionToLanguage

    widths = (code_channels, grid_side * grid_side, text_encoder.model.config.hidden_size,
              text_encoder.sentence_dim, text_encoder.token_embeddings)
    return AlignHeads(LGVQHeads(*widths, cfg.lgvq) if cfg.lgvq.enabled else None,
                      VisionToLanguage(*widths, cfg.vlt) if cfg.vlt.enabled else None)
