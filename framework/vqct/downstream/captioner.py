"""Captioning from frozen codes: a small Transformer decoder that writes a caption word by word
while cross-attending to the image cells; greedy decoding (the papers' captioning tables use
beam search; greedy keeps the comparison between tokenizers exact and cheap)."""

from __future__ import annotations

import torch
from torch import nn

from vqct.downstream.image_reader import ImageReader


class Captioner(nn.Module):
    def __init__(self, reader: ImageReader, vocab_size: int, length: int, width: int, layers: int, heads: int,
                 dropout: float = 0.1):
        super().__init__()
        self.reader, self.length = reader, length
        self.words = nn.Embedding(vocab_size, width, padding_idx=0)
        self.position = nn.Parameter(torch.randn(1, length, width) * 0.02)
        layer = nn.TransformerDecoderLayer(width, heads, 4 * width, dropout, batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, layers)
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, vocab_size))

    def forward(self, codes: torch.Tensor, words: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        """codes (B, h, w, columns), words (B, T) -> next-word logits (B, T, vocab)."""
        image = self.reader(codes) if image is None else image
        t = words.shape[1]
        causal = nn.Transformer.generate_square_subsequent_mask(t, device=words.device)
        x = self.words(words) + self.position[:, :t]
        return self.head(self.decoder(x, image, tgt_mask=causal, tgt_is_causal=True,
                                      tgt_key_padding_mask=words == 0))

    @torch.no_grad()
    def greedy(self, codes: torch.Tensor, bos: int, eos: int) -> torch.Tensor:
        """(B, length) word ids, <bos> first; positions after a caption's <eos> repeat <eos>."""
        image = self.reader(codes)
        words = torch.full((len(codes), 1), bos, dtype=torch.long, device=codes.device)
        done = torch.zeros(len(codes), dtype=torch.bool, device=codes.device)
        for _ in range(self.length - 1):
            step = self(codes, words, image)[:, -1].argmax(-1)
            step = torch.where(done, torch.full_like(step, eos), step)
            words = torch.cat([words, step[:, None]], dim=1)
            done |= step == eos
            if done.all():
                break
        return words
