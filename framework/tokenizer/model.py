"""VQTokenizer: encoder -> quant_conv -> quantizer -> post_quant_conv -> decoder.

The model knows nothing of DeepSpeed, Ray or MLflow: it maps images to code indices and
back, and returns what the losses need.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn

from vqct.models.vqgan import Decoder, Encoder, swish
from vqct.quantize import TransferQuantizer, VectorQuantizer


class TokenizerOutput(NamedTuple):
    reconstruction: torch.Tensor  # (B, 3, H, W)
    quant_loss: torch.Tensor  # scalar
    indices: torch.Tensor  # (B, h, w) code indices
    decoder_last_input: torch.Tensor  # input of decoder.conv_out, for the adaptive GAN weight
    align_losses: dict  # name -> scalar, from the alignment heads when captions were given


class VQTokenizer(nn.Module):
    def __init__(self, model_cfg: dict, quantizer: nn.Module, image_size: int, align: nn.Module | None = None):
        super().__init__()
        arch = dict(ch=model_cfg["ch"], ch_mult=list(model_cfg["ch_mult"]),
                    num_res_blocks=model_cfg["num_res_blocks"],
                    attn_resolutions=list(model_cfg["attn_resolutions"]),
                    z_channels=model_cfg["z_channels"], resolution=image_size,
                    dropout=model_cfg["dropout"])
        self.encoder = Encoder(in_channels=model_cfg["in_channels"], **arch)
        self.decoder = Decoder(out_channels=model_cfg["in_channels"], **arch)
        self.quantizer = quantizer
        self.quant_conv = nn.Conv2d(model_cfg["z_channels"], quantizer.channels, 1)
        self.post_quant_conv = nn.Conv2d(quantizer.channels, model_cfg["z_channels"], 1)
        self.downsample = 2 ** (len(model_cfg["ch_mult"]) - 1)
        self.align = align

    @property
    def last_layer(self) -> nn.Conv2d:
        return self.decoder.conv_out

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.quantizer(self.quant_conv(self.encoder(images)))

    def _decode_features(self, zq: torch.Tensor) -> torch.Tensor:
        dec = self.decoder
        h = dec.mid(dec.conv_in(self.post_quant_conv(zq)))
        for stage, up in zip(dec.stages, dec.ups):
            for layer in stage:
                h = layer(h)
            h = up(h)
        return swish(dec.norm_out(h))

    def forward(self, images: torch.Tensor, text: dict | None = None,
                masked: torch.Tensor | None = None) -> TokenizerOutput:
        zq, quant_loss, indices = self.encode(images)
        last_input = self._decode_features(zq)
        align_losses = self.align(zq, text, masked) if self.align is not None and text is not None else {}
        return TokenizerOutput(self.decoder.conv_out(last_input), quant_loss, indices, last_input, align_losses)

    @torch.no_grad()
    def tokenize(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(images)[2]

    def decode(self, zq: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(zq))

    @torch.no_grad()
    def detokenize(self, indices: torch.Tensor) -> torch.Tensor:
        return self.decode(self.quantizer.lookup(indices))


def build_quantizer(cfg: dict, dim: int, priors: dict | None = None) -> nn.Module:
    if cfg["name"] == "vq":
        return VectorQuantizer(cfg["codebook_size"], dim, cfg["beta"], cfg["legacy_beta"],
                               cfg["lookup_memory_mb"])
    if cfg["name"] == "vqct":
        if priors is None:
            raise ValueError("quantizer.name=vqct needs the text priors (vqct priors build RECIPE)")
        return TransferQuantizer(priors["adjective_embeddings"], priors["noun_embeddings"],
                                 priors["edge_index"], priors["edge_weight"], cfg["code_dim"],
                                 cfg["gcn_hidden"], cfg["gcn_dropout"], cfg["adj_topk"], cfg["beta"],
                                 cfg["legacy_beta"], cfg["lookup_memory_mb"])
    raise ValueError(f"quantizer.name='{cfg['name']}' is not known (known: vq, vqct)")


def build_tokenizer(cfg: dict, priors: dict | None = None, text_encoder=None) -> VQTokenizer:
    quantizer = build_quantizer(cfg["quantizer"], cfg["model"]["embed_dim"], priors)
    from vqct.align.heads import build_align

    align = build_align(cfg, quantizer.channels, text_encoder)
    return VQTokenizer(cfg["model"], quantizer, cfg["data"]["image_size"], align)
