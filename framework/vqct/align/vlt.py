"""VQCT-VLT's vision-to-language translation module: our design (the paper's module is
unpublished; docs/methods.md records it as ours).

A translator reads the quantized code sequence and
(a) generates the image's caption in the text tokenizer's vocabulary: 2 transformer
    decoder layers over the caption tokens (teacher forcing, causal self-attention,
    cross-attention to the codes), logits against the frozen token-embedding matrix plus a
    bias, cross-entropy on the next token;
(b) aligns its global embedding (mean of the encoded codes, projected) with the caption's
    sentence embedding by symmetric InfoNCE, the text side detached.
Both losses reach the codes, hence the transfer network and the encoder.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqct.config.schema import VLTConfig


class VisionToLanguage(nn.Module):
    def __init__(self, code_channels: int, num_tokens: int, text_width: int, sentence_width: int,
                 token_embeddings: torch.Tensor, cfg: VLTConfig):
        super().__init__()
        width = cfg.width
        self.code_in = nn.Linear(code_channels, width)
        self.code_pos = nn.Parameter(torch.randn(1, num_tokens, width) * 0.02)
        encoder_layer = nn.TransformerEncoderLayer(width, cfg.heads, 4 * width, dropout=0.0, batch_first=True,
                                                   norm_first=True)
        self.code_encoder = nn.TransformerEncoder(encoder_layer, cfg.layers, enable_nested_tensor=False)
        self.to_sentence = nn.Linear(width, sentence_width)
        self.token_in = nn.Linear(text_width, width, bias=False)
        self.token_pos = nn.Parameter(torch.randn(1, cfg.context_length, width) * 0.02)
        decoder_layer = nn.TransformerDecoderLayer(width, cfg.heads, 4 * width, dropout=0.0, batch_first=True,
                                                   norm_first=True)
        self.decoder = nn.TransformerDecoder(decoder_layer, cfg.layers)
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, text_width))
        self.register_buffer("vocab_embeddings", token_embeddings.detach().float(), persistent=False)
        self.vocab_bias = nn.Parameter(torch.zeros(token_embeddings.shape[0]))
        self.temperature = cfg.temperature

    def encode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return self.code_encoder(self.code_in(codes.flatten(2).transpose(1, 2)) + self.code_pos)

    def global_embedding(self, codes: torch.Tensor, memory: torch.Tensor | None = None) -> torch.Tensor:
        """The image's embedding in the sentence space (what the contrastive term aligns);
        MEMORY: encode_codes(CODES), when the caller has it already."""
        memory = self.encode_codes(codes) if memory is None else memory
        return self.to_sentence(memory.mean(1))

    def logits(self, memory: torch.Tensor, ids: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token logits (B, T, vocabulary) for the caption prefix IDS."""
        length = ids.shape[1]
        x = self.token_in(self.vocab_embeddings[ids].to(memory.dtype)) + self.token_pos[:, :length].to(memory.dtype)
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=ids.device), diagonal=1)
        h = self.head(self.decoder(x, memory, tgt_mask=causal, tgt_key_padding_mask=pad, tgt_is_causal=True))
        return h.float() @ self.vocab_embeddings.t() + self.vocab_bias.float()

    def forward(self, codes: torch.Tensor, text: dict) -> dict[str, torch.Tensor]:
        memory = self.encode_codes(codes)
        ids, valid = text["ids"], text["mask"].bool()
        logits = self.logits(memory, ids[:, :-1], ~valid[:, :-1])
        targets = ids[:, 1:].masked_fill(~valid[:, 1:], -100)
        caption = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
        image = F.normalize(self.global_embedding(codes, memory).float(), dim=-1)
        sentence = F.normalize(text["sentence"].detach().float(), dim=-1)
        sim = image @ sentence.t() / self.temperature
        labels = torch.arange(sim.shape[0], device=sim.device)
        contrastive = 0.5 * (F.cross_entropy(sim, labels) + F.cross_entropy(sim.t(), labels))
        return {"vlt_caption": caption, "vlt_align": contrastive}

    @torch.no_grad()
    def generate(self, codes: torch.Tensor, start_id: int, end_id: int, max_length: int) -> torch.Tensor:
        """Greedy caption ids (B, <= max_length), starting with START_ID, stopping at END_ID."""
        memory = self.encode_codes(codes)
        ids = torch.full((codes.shape[0], 1), start_id, dtype=torch.long, device=codes.device)
        done = torch.zeros(codes.shape[0], dtype=torch.bool, device=codes.device)
        for _ in range(max_length - 1):
            next_id = self.logits(memory, ids)[:, -1].argmax(-1)
            next_id = next_id.masked_fill(done, end_id)
            ids = torch.cat([ids, next_id.unsqueeze(1)], dim=1)
            done |= next_id == end_id
            if done.all():
                break
        return ids
