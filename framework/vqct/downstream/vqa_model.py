"""VQA from frozen codes: every image cell reads the question. [answer slot, image tokens] go
through a pre-norm Transformer decoder without the causal mask whose memory is the question
(its words through one encoder layer): in each layer the cells attend to each other, then to
the question; the slot's output picks one word of the training answers (the COCO-QA and CLEVR
form: one-word answers, a classifier over them).

Why the image reads the question and not the other way round: a question about one object
("is there an orange ring?") is answered where that object is, so each cell must know the
question before the cells compare positions or are counted; the two forms where the question
reads the image (one encoder over [slot, question, image], or a decoder of [slot, question]
over the image) stayed at or near the answers' priors on the scenes, ground-truth codes
included (docs/results.md)."""

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
        self.question = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout, batch_first=True,
                                                   norm_first=True)
        self.slot = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        layer = nn.TransformerDecoderLayer(width, heads, 4 * width, dropout, batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, layers)
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, answers))

    def forward(self, codes: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
        """codes (B, h, w, columns), question (B, Q) word ids (0 = padding) -> logits (B, answers)."""
        padding = question == 0
        words = self.question(self.words(question) + self.word_position[:, : question.shape[1]],
                              src_key_padding_mask=padding)
        cells = torch.cat([self.slot.expand(len(question), -1, -1), self.reader(codes)], dim=1)
        out = self.decoder(cells, words, memory_key_padding_mask=padding)
        return self.head(out[:, 0])
