"""VQTokenizer: encoder -> quant_conv -> quantizer -> post_quant_conv -> decoder.

The model knows nothing of DeepSpeed, Ray or MLflow: it maps images to code indices and
back, and returns what the losses need.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn

from vqct.align.heads import build_align
from vqct.config.schema import Config, ModelConfig, QuantizerConfig, VQConfig, VQCTConfig
from vqct.models.vqgan import Decoder, Encoder
from vqct.quantize import TransferQuantizer, VectorQuantizer
from vqct.seeds import heads_seed


class TokenizerOutput(NamedTuple):
    reconstruction: torch.Tensor  # (B, 3, H, W)
    quant_loss: torch.Tensor  # scalar
    indices: torch.Tensor  # (B, h, w) code indices
    decoder_last_input: torch.Tensor  # input of decoder.conv_out, for the adaptive GAN weight
    align_losses: dict  # name -> scalar, from the alignment heads when captions were given


def _layout_of(like: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """X in LIKE's memory layout: the quantizer hands back NCHW whatever came in, and with
    trainer.channels_last the decoder should run NHWC as the encoder did."""
    if like.dim() == 4 and not like.is_contiguous() and like.is_contiguous(memory_format=torch.channels_last):
        return x.contiguous(memory_format=torch.channels_last)
    return x


class VQTokenizer(nn.Module):
    def __init__(self, model_cfg: ModelConfig, quantizer: nn.Module, image_size: int, align: nn.Module | None = None):
        super().__init__()
        m = model_cfg
        arch = dict(ch=m.ch, ch_mult=list(m.ch_mult), num_res_blocks=m.num_res_blocks,
                    attn_resolutions=list(m.attn_resolutions), z_channels=m.z_channels, resolution=image_size,
                    dropout=m.dropout, attention=m.attention)
        self.encoder = Encoder(in_channels=m.in_channels, **arch)
        self.decoder = Decoder(out_channels=m.in_channels, **arch)
        self.quantizer = quantizer
        self.quant_conv = nn.Conv2d(m.z_channels, quantizer.channels, 1)
        self.post_quant_conv = nn.Conv2d(quantizer.channels, m.z_channels, 1)
        self.align = align

    @property
    def last_layer(self) -> nn.Conv2d:
        return self.decoder.conv_out

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.quantizer(self.quant_conv(self.encoder(images)))

    def forward(self, images: torch.Tensor, text: dict | None = None,
                masked: torch.Tensor | None = None) -> TokenizerOutput:
        zq, quant_loss, indices, codes = self.quantizer(self.quant_conv(self.encoder(images)), with_codes=True)
        last_input = self.decoder.features(self.post_quant_conv(_layout_of(images, zq)))
        align_losses = self.align(zq, text, masked, codes) if self.align is not None and text is not None else {}
        return TokenizerOutput(self.decoder.conv_out(last_input), quant_loss, indices, last_input, align_losses)

    @torch.no_grad()
    def tokenize(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(images)[2]

    def decode(self, zq: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(zq))

    @torch.no_grad()
    def detokenize(self, indices: torch.Tensor) -> torch.Tensor:
        return self.decode(self.quantizer.lookup(indices))


def build_quantizer(q: QuantizerConfig, dim: int, priors: dict | None = None) -> nn.Module:
    """DIM: the quantized map's channels (model.embed_dim)."""
    if isinstance(q, VQConfig):
        return VectorQuantizer(q.codebook_size, dim, q.beta, q.legacy_beta, q.lookup_memory_mb)
    if isinstance(q, VQCTConfig):
        if priors is None:
            raise ValueError("quantizer.name=vqct needs the text priors (vqct priors build RECIPE)")
        return TransferQuantizer(priors["adjective_embeddings"], priors["noun_embeddings"],
                                 priors["edge_index"], priors["edge_weight"], q.code_dim, q.gcn_hidden,
                                 q.gcn_dropout, q.adj_topk, q.beta, q.legacy_beta, q.lookup_memory_mb)
    raise ValueError(f"quantizer.name='{q.name}' is not known (known: vq, vqct)")


def build_tokenizer(cfg: Config, priors: dict | None = None, text_encoder=None) -> VQTokenizer:
    quantizer = build_quantizer(cfg.quantizer, cfg.model.embed_dim, priors)
    model = VQTokenizer(cfg.model, quantizer, cfg.data.image_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(heads_seed(cfg.seed))  # vqct.seeds: the heads' own stream
        model.align = build_align(cfg.align, cfg.token_grid, quantizer.channels, text_encoder,
                                  seed=heads_seed(cfg.seed))
    return model
