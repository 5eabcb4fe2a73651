"""The alignment heads a recipe enables (LG-VQ, VQCT-VLT), as one module in the tokenizer."""

from __future__ import annotations

import torch
import torch.nn as nn


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


def enabled(cfg: dict) -> bool:
    align = cfg.get("align", {})
    return bool(align.get("lgvq", {}).get("enabled") or align.get("vlt", {}).get("enabled"))


def context_length(cfg: dict) -> int:
    """Caption tokens the text encoder keeps: the longest any enabled head wants."""
    lengths = [head["context_length"] for head in cfg.get("align", {}).values() if head.get("enabled")]
    return max(lengths, default=30)


def build_align(cfg: dict, code_channels: int, text_encoder) -> AlignHeads | None:
    if not enabled(cfg):
        return None
    if text_encoder is None:
        raise ValueError("the alignment heads need the text encoder")
    from vqct.align.lgvq import LGVQHeads
    from vqct.align.vlt import VisionToLanguage

    side = cfg["data"]["image_size"] // 2 ** (len(cfg["model"]["ch_mult"]) - 1)
    widths = (code_channels, side * side, text_encoder.model.config.hidden_size, text_encoder.sentence_dim,
              text_encoder.token_embeddings)
    lgvq, vlt = cfg["align"]["lgvq"], cfg["align"]["vlt"]
    return AlignHeads(LGVQHeads(*widths, lgvq) if lgvq["enabled"] else None,
                      VisionToLanguage(*widths, vlt) if vlt["enabled"] else None)
