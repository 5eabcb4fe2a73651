"""LG-VQ's language-guided losses (Liang et al., NeurIPS 2024) over the quantized map.

A small ViT reads the quantized codes (Z_vt, with a CLS token) in the text model's width;
three losses pull the codes towards the caption's semantics:
- L_gsa: InfoNCE between the CLS output and the caption's sentence embedding (image to
  text, cosine, text side detached);
- L_mtp: the caption's tokens are masked (ratio ~ N(0.5, 0.1) clipped to [0.1, 0.3]) and
  predicted by 2 decoder layers that cross-attend to Z_vt, with logits against the frozen
  token-embedding matrix plus a bias, label smoothing 0.1, on masked tokens only;
- L_ras: each caption word picks the Z_vt position most similar to it; the Gram matrix of
  the codes at those positions (projected, L2-normalised) is matched (MSE) to the detached
  Gram matrix of the words.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqct.config.schema import LGVQConfig


class VisualTokenEncoder(nn.Module):
    """Z_vt: codes (B, C, h, w) -> (B, 1 + h*w, text_width), position 0 is CLS."""

    def __init__(self, in_channels: int, num_tokens: int, width: int, layers: int, heads: int, text_width: int):
        super().__init__()
        self.proj_in = nn.Linear(in_channels, width)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.randn(1, 1 + num_tokens, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.proj_out = nn.Linear(width, text_width)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        tokens = self.proj_in(codes.flatten(2).transpose(1, 2))
        tokens = torch.cat([self.cls.expand(tokens.shape[0], -1, -1), tokens], dim=1) + self.pos
        return self.proj_out(self.norm(self.blocks(tokens)))


def mask_ratio(generator: torch.Generator | None = None) -> float:
    """LG-VQ's ratio: a draw from N(0.5, 0.1), clipped to [0.1, 0.3]."""
    return float(torch.clamp(torch.normal(torch.tensor(0.5), torch.tensor(0.1), generator=generator), 0.1, 0.3))


def choose_masked(maskable: torch.Tensor, ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each maskable token independently with probability RATIO; at least one per batch."""
    chosen = (torch.rand(maskable.shape, generator=generator) < ratio).to(maskable.device) & maskable
    if not chosen.any() and maskable.any():
        first = maskable.flatten().nonzero()[0]
        chosen.view(-1)[first] = True
    return chosen


class MaskedTextPredictor(nn.Module):
    def __init__(self, text_width: int, context_length: int, heads: int, layers: int = 2):
        super().__init__()
        self.mask_tokens = nn.Parameter(torch.randn(context_length, text_width) * 0.02)  # one per position
        layer = nn.TransformerDecoderLayer(text_width, heads, 4 * text_width, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, layers)
        self.head = nn.Sequential(nn.Linear(text_width, text_width), nn.GELU(), nn.LayerNorm(text_width))

    def forward(self, tokens: torch.Tensor, pad: torch.Tensor, masked: torch.Tensor, z_vt: torch.Tensor,
                vocab_embeddings: torch.Tensor, vocab_bias: torch.Tensor) -> torch.Tensor:
        """Logits (masked positions, vocabulary), in the row-major order of MASKED. Only the masked
        positions meet the vocabulary: the (B*T, 30k+) product is most of the head's cost."""
        length = tokens.shape[1]
        slots = self.mask_tokens[:length].unsqueeze(0).to(tokens.dtype)
        x = torch.where(masked.unsqueeze(-1), slots, tokens)
        h = self.head(self.decoder(x, z_vt, tgt_key_padding_mask=pad))[masked]
        return h.float() @ vocab_embeddings.float().t() + vocab_bias.float()


def gsa_loss(cls: torch.Tensor, sentence: torch.Tensor, temperature: float) -> torch.Tensor:
    logits = F.normalize(cls.float(), dim=-1) @ F.normalize(sentence.detach().float(), dim=-1).t() / temperature
    return F.cross_entropy(logits, torch.arange(cls.shape[0], device=cls.device))


def ras_loss(code_tokens: torch.Tensor, z_vt_tokens: torch.Tensor, words: torch.Tensor,
             word_mask: torch.Tensor) -> torch.Tensor:
    """CODE_TOKENS (B, N, D): projected codes; Z_VT_TOKENS (B, N, D); WORDS (B, T, D)."""
    sim = F.normalize(words.float(), dim=-1) @ F.normalize(z_vt_tokens.float(), dim=-1).transpose(1, 2)
    picked = torch.gather(code_tokens, 1, sim.argmax(-1).unsqueeze(-1).expand(-1, -1, code_tokens.shape[-1]))
    z = F.normalize(picked.float(), dim=-1)
    w = F.normalize(words.detach().float(), dim=-1)
    gram_z, gram_w = z @ z.transpose(1, 2), w @ w.transpose(1, 2)
    pair_mask = (word_mask.unsqueeze(1) & word_mask.unsqueeze(2)).float()
    return ((gram_z - gram_w) ** 2 * pair_mask).sum() / pair_mask.sum().clamp_min(1.0)


class LGVQHeads(nn.Module):
    """The trainable LG-VQ modules; the text model itself stays outside, frozen."""

    def __init__(self, code_channels: int, num_tokens: int, text_width: int, sentence_width: int,
                 token_embeddings: torch.Tensor, cfg: LGVQConfig):
        super().__init__()
        self.visual = VisualTokenEncoder(code_channels, num_tokens, cfg.width, cfg.layers, cfg.heads, text_width)
        self.to_sentence = nn.Linear(text_width, sentence_width)
        self.predictor = MaskedTextPredictor(text_width, cfg.context_length, cfg.text_heads)
        self.code_proj = nn.Linear(code_channels, text_width)
        self.register_buffer("vocab_embeddings", token_embeddings.detach().float(), persistent=False)
        self.vocab_bias = nn.Parameter(torch.zeros(token_embeddings.shape[0]))
        self.temperature = cfg.temperature

    def visual_tokens(self, codes: torch.Tensor) -> torch.Tensor:
        """Z_vt (B, 1 + h*w, text width) of quantized CODES (B, C, h, w); position 0 is CLS."""
        return self.visual(codes)

    def global_embedding(self, z_vt: torch.Tensor) -> torch.Tensor:
        """The image's embedding in the sentence space (what L_gsa aligns)."""
        return self.to_sentence(z_vt[:, 0])

    def predict_masked(self, tokens: torch.Tensor, pad: torch.Tensor, masked: torch.Tensor,
                       z_vt: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits of the MASKED positions (row-major), given visual tokens Z_VT."""
        return self.predictor(tokens, pad, masked, z_vt, self.vocab_embeddings, self.vocab_bias)

    def relationship_loss(self, codes: torch.Tensor, z_vt: torch.Tensor, tokens: torch.Tensor,
                          words: torch.Tensor) -> torch.Tensor:
        code_tokens = self.code_proj(codes.flatten(2).transpose(1, 2))
        return ras_loss(code_tokens, z_vt[:, 1:], tokens, words)

    def forward(self, codes: torch.Tensor, text: dict, masked: torch.Tensor) -> dict[str, torch.Tensor]:
        """CODES (B, C, h, w) quantized; TEXT from TextEncoder.encode; MASKED (B, T) bool."""
        z_vt = self.visual_tokens(codes)
        tokens, valid = text["tokens"].to(z_vt.dtype), text["mask"].bool()
        losses = {"gsa": gsa_loss(self.global_embedding(z_vt), text["sentence"], self.temperature)}
        logits = self.predict_masked(tokens, ~valid, masked, z_vt)
        losses["mtp"] = F.cross_entropy(logits, text["ids"][masked], label_smoothing=0.1)
        losses["ras"] = self.relationship_loss(codes, z_vt, tokens, valid & text["words"])
        return losses
