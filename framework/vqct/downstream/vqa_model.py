"""VQA from frozen codes: [answer slot, question words, image cells] through a small
Transformer encoder; the answer slot's output picks one word of the training answers (the
COCO-QA and CLEVR form: one-word answers, a classifier over them)."""

from __future__ import annotations

import torch
from torch import nn

from vqct.downstream.image_reader import ImageReader


class VQAModel(nn.Module):
    def __init__(self, reader: ImageReader, vocab_size: int, answers: int, question_length: int,
                 width: int, layers: int, heads: int, dropout: float = 0.1):
        super().__init__()
        self.reader = reader
        self.words = nn.Embedding(vocab_size, width, padding_idx=0)
        self.word_position = nn.Parameter(torch.randn(1, question_length, width) * 0.02)
        self.slot = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, answers))

    def forward(self, codes: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
        """codes (B, h, w, columns), question (B, Q) word ids (0 = padding) -> logits (B, answers)."""
        image = self.reader(codes)
        words = self.words(question) + self.word_position[:, : question.shape[1]]
        slot = self.slot.expand(len(question), -1, -1)
        padding = torch.cat([torch.zeros(len(question), 1, dtype=torch.bool, device=question.device),
                             question == 0,
                             torch.zeros(image.shape[:2], dtype=torch.bool, device=question.device)], dim=1)
        out = self.encoder(torch.cat([slot, words, image], dim=1), src_key_padding_mask=padding)
        return self.head(out[:, 0])
