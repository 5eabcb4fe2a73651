"""The alignment heads a recipe enables (LG-VQ, VQCT-VLT), as one module in the tokenizer.

Gradient flow (docs/methods.md): LG-VQ's heads read the straight-through quantized map, as
the official code does, so they train the encoder and quant_conv, never the codebook. The
VQCT-VLT translator reads the same values with the code vectors' own gradient path added, so
its losses reach the codebook (for vqct, the transfer network) as well as the encoder.

The heads draw their randomness (dropout) from a generator of their own, so that a recipe
with heads consumes the global random stream exactly as one without them.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from vqct.config.schema import AlignConfig


def with_code_gradient(zq: torch.Tensor, codes: torch.Tensor | None) -> torch.Tensor:
    """The values of ZQ (straight-through: gradient to the encoder) plus a zero-valued term whose
    gradient reaches the code vectors CODES (and through them the codebook or the GCN)."""
    return zq if codes is None else zq + (codes - codes.detach())


class AlignHeads(nn.Module):
    def __init__(self, lgvq: nn.Module | None, vlt: nn.Module | None, seed: int = 0):
        super().__init__()
        self.lgvq, self.vlt = lgvq, vlt
        self.seed = seed
        self._rng_state: tuple | None = None

    @contextlib.contextmanager
    def own_rng(self, device: torch.device):
        """Run the block on this module's random stream, then give the global one back untouched."""
        cuda = device.type == "cuda"
        with torch.random.fork_rng(devices=[device] if cuda else []):
            if self._rng_state is None:
                torch.manual_seed(self.seed)
            else:
                torch.set_rng_state(self._rng_state[0])
                if cuda and self._rng_state[1] is not None:
                    torch.cuda.set_rng_state(self._rng_state[1], device)
            yield
            self._rng_state = (torch.get_rng_state(), torch.cuda.get_rng_state(device) if cuda else None)

    def forward(self, zq: torch.Tensor, text: dict, masked: torch.Tensor | None,
                codes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """ZQ: the straight-through quantized map; CODES: the chosen code vectors (same values)."""
        losses = {}
        with self.own_rng(zq.device):
            if self.lgvq is not None:
                losses.update(self.lgvq(zq, text, masked))
            if self.vlt is not None:
                losses.update(self.vlt(with_code_gradient(zq, codes), text))
        return losses


def build_align(cfg: AlignConfig, grid_side: int, code_channels: int, text_encoder,
                seed: int = 0) -> AlignHeads | None:
    """The heads CFG enables, for a GRID_SIDE x GRID_SIDE map of CODE_CHANNELS-wide codes; SEED
    starts their own random stream."""
    if not cfg.enabled:
        return None
    if text_encoder is None:
        raise ValueError("the alignment heads need the text encoder")
    from vqct.align.lgvq import LGVQHeads
    from vqct.align.vlt import VisionToLanguage

    widths = (code_channels, grid_side * grid_side, text_encoder.model.config.hidden_size,
              text_encoder.sentence_dim, text_encoder.token_embeddings)
    return AlignHeads(LGVQHeads(*widths, cfg.lgvq) if cfg.lgvq.enabled else None,
                      VisionToLanguage(*widths, cfg.vlt) if cfg.vlt.enabled else None, seed)
