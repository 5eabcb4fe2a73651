"""LG-VQ's language-guided losses (Liang et al., NeurIPS 2024), as its official code has them
(623851394/LG-VQ-language-guided-codebook-learning, taming/models/LG_vqgan.py,
taming/clip/model.py, taming/clip/clip.py, taming/modules/transformer/decoder.py; each detail
and its line is in docs/methods.md).

f_vt, a small CLIP-style transformer, reads the quantized map itself (its vectors are the
tokens, no input layer) and gives Z_vt in the text model's width, position 0 a CLS token.
- L_gsa: image-to-text InfoNCE between Z_vt's CLS and the caption's sentence embedding,
  cosine logits (temperature 1), text side detached;
- L_mtp: caption tokens masked (ratio from a truncated normal, each token independently) and
  predicted by post-norm decoder layers that cross-attend to Z_vt; logits against the frozen
  token-embedding matrix plus a bias, label smoothing 0.1, masked tokens only. As in the
  official code the caption sits in a fixed context_length-token context whose zeroed padding
  every word attends to (its padding mask masks nothing); mask_padding=True masks those keys;
- L_ras: each caption token picks the Z_vt position most similar to it; the code there,
  projected (Linear-GELU-LayerNorm) and signed by that similarity, gives a Gram matrix matched
  (MSE over every B x T x T entry) to the detached Gram matrix of the token features.
The heads read the straight-through quantized map: these losses train the encoder,
quant_conv and the heads, not the codebook (as in the official code).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqct.config.schema import LGVQConfig

# The official mask ratio: N(0.5, 0.1) truncated to [0.1, 0.3] (scipy truncnorm), one draw a batch.
MASK_MEAN, MASK_STD, MASK_LOW, MASK_HIGH = 0.5, 0.1, 0.1, 0.3


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """CLIP's activation."""
    return x * torch.sigmoid(1.702 * x)


class VisualTokenEncoder(nn.Module):
    """f_vt: codes (B, C, h, w) -> Z_vt (B, 1 + h*w, text_width), position 0 is CLS.

    CLIP's vision transformer from the patch embedding on: CLS and positions, ln_pre, pre-norm
    residual blocks with QuickGELU, ln_post on every token, a bias-free projection; CLIP's
    initialisation (CLS, positions and projection N(0, 0.01))."""

    def __init__(self, width: int, num_tokens: int, layers: int, heads: int, text_width: int):
        super().__init__()
        self.cls = nn.Parameter(torch.empty(width))
        self.pos = nn.Parameter(torch.empty(1 + num_tokens, width))
        self.ln_pre = nn.LayerNorm(width)
        block = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation=quick_gelu,
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.empty(width, text_width))
        self._init_like_clip(width, layers)

    def _init_like_clip(self, width: int, layers: int) -> None:
        for p in (self.cls, self.pos, self.proj):
            nn.init.normal_(p, std=0.01)
        proj_std, attn_std, fc_std = width ** -0.5 * (2 * layers) ** -0.5, width ** -0.5, (2 * width) ** -0.5
        for block in self.blocks.layers:
            nn.init.normal_(block.self_attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.self_attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.linear1.weight, std=fc_std)
            nn.init.normal_(block.linear2.weight, std=proj_std)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        tokens = codes.flatten(2).transpose(1, 2)
        cls = self.cls.to(tokens.dtype).expand(tokens.shape[0], 1, -1)
        x = self.ln_pre(torch.cat([cls, tokens], dim=1) + self.pos.to(tokens.dtype))
        return self.ln_post(self.blocks(x)) @ self.proj.to(tokens.dtype)


def mask_ratio(generator: torch.Generator | None = None) -> float:
    """One draw of LG-VQ's ratio, N(0.5, 0.1) truncated to [0.1, 0.3], by the inverse CDF."""
    lo, hi = (torch.special.ndtr(torch.tensor((b - MASK_MEAN) / MASK_STD, dtype=torch.float64))
              for b in (MASK_LOW, MASK_HIGH))
    u = lo + (hi - lo) * torch.rand((), generator=generator, dtype=torch.float64)
    return float(MASK_MEAN + MASK_STD * torch.special.ndtri(u))


def choose_masked(maskable: torch.Tensor, ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each maskable token (a caption word piece, never start/end or padding) independently
    with probability RATIO, as the official tokenizer does; a batch may mask none."""
    return (torch.rand(maskable.shape, generator=generator) < ratio).to(maskable.device) & maskable


def masked_caption_tokens(text_encoder, text: dict, masked: torch.Tensor) -> torch.Tensor:
    """Per-token features of the captions with the MASKED ids replaced before encoding (the
    text model's mask token, else its unknown token): no feature carries a masked word."""
    tokenizer = text_encoder.tokenizer
    placeholder = tokenizer.mask_token_id if tokenizer.mask_token_id is not None else tokenizer.unk_token_id
    return text_encoder.encode_ids(text["ids"].masked_fill(masked, placeholder), text["mask"])["tokens"]


class PostNormDecoderLayer(nn.Module):
    """One layer of LG-VQ's masked-text decoder: self-attention over the caption (keys where
    PAD is True masked; PAD None masks nothing, as the official code does), cross-attention to
    Z_vt, feed-forward (ReLU) as wide as the model, each followed by dropout, the residual and
    LayerNorm (eps 1e-12); no dropout on attention weights."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Dropout(dropout), nn.Linear(width, width))
        self.norms = nn.ModuleList(nn.LayerNorm(width, eps=1e-12) for _ in range(3))
        self.drops = nn.ModuleList(nn.Dropout(dropout) for _ in range(3))
        for attn in (self.self_attn, self.cross_attn):  # the official init: N(0, width^-0.5)
            nn.init.normal_(attn.in_proj_weight, std=width ** -0.5)
            nn.init.normal_(attn.out_proj.weight, std=width ** -0.5)
        for linear in (self.ffn[0], self.ffn[3]):
            nn.init.normal_(linear.weight, std=width ** -0.5)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
        x = self.norms[0](x + self.drops[0](self.self_attn(x, x, x, key_padding_mask=pad, need_weights=False)[0]))
        x = self.norms[1](x + self.drops[1](self.cross_attn(x, memory, memory, need_weights=False)[0]))
        return self.norms[2](x + self.drops[2](self.ffn(x)))


class MaskedTextPredictor(nn.Module):
    """f_m: masked positions take a learned token (one per position, N(0, 0.01)), padding is
    zeroed, no positions are added; then the decoder layers and a Linear-GELU-LayerNorm head.

    MASK_PADDING False (the official code's decoder): the caption is padded with zeroed
    positions to the fixed CONTEXT_LENGTH and every word attends to them (the official padding
    mask is a B x 1 x 1 count of real tokens, never 0: it masks nothing). True: the caption
    stays as long as the batch's longest and padding keys are masked."""

    def __init__(self, text_width: int, context_length: int, heads: int, layers: int, dropout: float,
                 mask_padding: bool = False):
        super().__init__()
        self.mask_tokens = nn.Parameter(torch.randn(context_length, text_width) * 0.01)
        self.layers = nn.ModuleList(PostNormDecoderLayer(text_width, heads, dropout) for _ in range(layers))
        self.head = nn.Sequential(nn.Linear(text_width, text_width), nn.GELU(), nn.LayerNorm(text_width))
        self.mask_padding = mask_padding

    def forward(self, tokens: torch.Tensor, pad: torch.Tensor, masked: torch.Tensor, z_vt: torch.Tensor,
                vocab_embeddings: torch.Tensor, vocab_bias: torch.Tensor) -> torch.Tensor:
        """Logits (masked positions, vocabulary), in the row-major order of MASKED. Only the masked
        positions meet the vocabulary: the (B*T, 30k+) product is most of the head's cost."""
        context = self.mask_tokens.shape[0]
        if tokens.shape[1] > context:
            raise ValueError(f"captions of {tokens.shape[1]} tokens exceed align.lgvq.context_length={context}")
        if not self.mask_padding and tokens.shape[1] < context:  # the official fixed context
            extra = context - tokens.shape[1]
            tokens = torch.cat([tokens, tokens.new_zeros(tokens.shape[0], extra, tokens.shape[2])], 1)
            pad = torch.cat([pad, pad.new_ones(pad.shape[0], extra)], 1)
            masked = torch.cat([masked, masked.new_zeros(masked.shape[0], extra)], 1)
        slots = self.mask_tokens[:tokens.shape[1]].unsqueeze(0).to(tokens.dtype)
        x = torch.where(masked.unsqueeze(-1), slots, tokens) * (~pad).unsqueeze(-1).to(tokens.dtype)
        key_mask = pad if self.mask_padding else None
        for layer in self.layers:
            x = layer(x, z_vt, key_mask)
        h = self.head(x)[masked]
        return h.float() @ vocab_embeddings.float().t() + vocab_bias.float()


def gsa_loss(image: torch.Tensor, sentence: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Image-to-text InfoNCE over the batch, cosine logits / TEMPERATURE, text side detached."""
    logits = F.normalize(image.float(), dim=-1) @ F.normalize(sentence.detach().float(), dim=-1).t() / temperature
    return F.cross_entropy(logits, torch.arange(image.shape[0], device=image.device))


def mtp_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Label-smoothed (0.1) cross-entropy averaged over the masked tokens; 0 when none was masked."""
    total = F.cross_entropy(logits, targets, label_smoothing=0.1, reduction="sum")
    return total / max(1, targets.numel())


def ras_loss(code_tokens: torch.Tensor, z_vt_tokens: torch.Tensor, words: torch.Tensor, valid: torch.Tensor,
             context_length: int | None = None) -> torch.Tensor:
    """CODE_TOKENS (B, N, D): projected codes; Z_VT_TOKENS (B, N, D); WORDS (B, T, D) token
    features; VALID (B, T) real tokens (start/end included). The mean is over B x L x L entries,
    L = CONTEXT_LENGTH (default T): the official captions are always padded to 30."""
    sim = F.normalize(words.float(), dim=-1) @ F.normalize(z_vt_tokens.float(), dim=-1).transpose(1, 2)
    value, index = sim.max(-1)
    picked = torch.gather(code_tokens, 1, index.unsqueeze(-1).expand(-1, -1, code_tokens.shape[-1]))
    keep = valid.unsqueeze(-1).float()
    z = F.normalize(picked.float() * value.unsqueeze(-1), dim=-1) * keep  # only the similarity's sign survives
    w = F.normalize(words.detach().float(), dim=-1) * keep
    length = context_length or words.shape[1]
    return ((z @ z.transpose(1, 2) - w @ w.transpose(1, 2)) ** 2).sum() / (words.shape[0] * length * length)


class CodeProjection(nn.Module):
    """L_ras's projection of the codes: Linear (weight N(0, 0.01)), GELU, LayerNorm."""

    def __init__(self, code_channels: int, text_width: int):
        super().__init__()
        self.linear = nn.Linear(code_channels, text_width)
        nn.init.normal_(self.linear.weight, std=0.01)
        self.act, self.norm = nn.GELU(), nn.LayerNorm(text_width)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.linear(codes)))


class LGVQHeads(nn.Module):
    """The trainable LG-VQ modules; the text model itself stays outside, frozen."""

    def __init__(self, code_channels: int, num_tokens: int, text_width: int, sentence_width: int,
                 token_embeddings: torch.Tensor, cfg: LGVQConfig):
        super().__init__()
        self.visual = VisualTokenEncoder(code_channels, num_tokens, cfg.layers, cfg.heads, text_width)
        # The official sentence space is the token space (CLIP: both 512-d): no layer between.
        # A text model whose sentence embedding is wider or narrower gets a bias-free Linear (ours).
        self.to_sentence = (nn.Identity() if sentence_width == text_width
                            else nn.Linear(text_width, sentence_width, bias=False))
        self.predictor = MaskedTextPredictor(text_width, cfg.context_length, cfg.text_heads, cfg.text_layers,
                                             cfg.text_dropout, cfg.mask_padding)
        self.code_proj = CodeProjection(code_channels, text_width)
        self.register_buffer("vocab_embeddings", token_embeddings.detach().float(), persistent=False)
        self.vocab_bias = nn.Parameter(torch.zeros(token_embeddings.shape[0]))
        self.temperature = cfg.temperature
        self.context_length = cfg.context_length

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
                          valid: torch.Tensor) -> torch.Tensor:
        code_tokens = self.code_proj(codes.flatten(2).transpose(1, 2))
        return ras_loss(code_tokens, z_vt[:, 1:], tokens, valid, self.context_length)

    def forward(self, codes: torch.Tensor, text: dict, masked: torch.Tensor) -> dict[str, torch.Tensor]:
        """CODES (B, C, h, w) quantized; TEXT from TextEncoder.encode, with 'masked_tokens' when the
        masked caption was encoded (masked_caption_tokens); MASKED (B, T) bool."""
        z_vt = self.visual_tokens(codes)
        tokens, valid = text["tokens"].to(z_vt.dtype), text["mask"].bool()
        losses = {"gsa": gsa_loss(self.global_embedding(z_vt), text["sentence"], self.temperature)}
        decoder_input = text.get("masked_tokens", text["tokens"]).to(z_vt.dtype)
        logits = self.predict_masked(decoder_input, ~valid, masked, z_vt)
        losses["mtp"] = mtp_loss(logits, text["ids"][masked])
        losses["ras"] = self.relationship_loss(codes, z_vt, tokens, valid)
        return losses
