"""Sampling codes from a CodeGenerator: temperature, top-k, top-p, classifier-free guidance,
a prefix of the image's own codes (completion), with or without the key-value cache.

Each column of a position (VQCT: adjectives and noun) is drawn independently from its own
head, as the official VQCT sampler does (cond_transformer_ours.py:166-182). Guidance follows
LlamaGen (generate.py:77-102): the batch is doubled with the null condition and the logits
combined as uncond + scale * (cond - uncond); the same token is fed to both halves.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from vqct.stage2.generator import CodeGenerator


@dataclass
class SamplingConfig:
    temperature: float = 1.0  # 0: the most likely code (argmax)
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0  # 1.0: no nucleus filter
    cfg_scale: float | None = None  # None: no guidance; a number (1.0 included) runs the doubled batch
    use_cache: bool = True
    # Unconditional samples from a conditional generator: every sample gets the null condition
    # its condition dropout trained (what guidance mixes in), whatever condition is passed.
    null_condition: bool = False
    # Which line of each condition sample's caption a caption-conditioned generator is given
    # (for evaluating over held-out conditions; the scenes' relation line is 2).
    caption_line: int = 0

    def check(self) -> None:
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1 or self.caption_line < 0:
            raise ValueError(f"sampling: temperature >= 0, top_k >= 0, 0 < top_p <= 1 and caption_line >= 0 "
                             f"(got {self})")
        if self.null_condition and self.cfg_scale is not None:
            raise ValueError("sampling: the null condition samples unconditionally; guidance (cfg_scale) "
                             "has nothing to mix with it")


def _filter(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    # transformers' warpers are the filters most users know; input_ids are not read by either
    if cfg.top_k > 0:
        logits = TopKLogitsWarper(min(cfg.top_k, logits.shape[-1]))(None, logits)
    if cfg.top_p < 1.0:
        logits = TopPLogitsWarper(cfg.top_p)(None, logits)
    return logits


def _draw(logits: list[torch.Tensor], cfg: SamplingConfig, generator: torch.Generator | None) -> torch.Tensor:
    """Per-column logits (B', V) -> one code per column (B, columns); with guidance B' = 2B."""
    picks = []
    for l in logits:
        l = l.float()
        if cfg.cfg_scale is not None:
            cond, uncond = l.chunk(2)
            l = uncond + cfg.cfg_scale * (cond - uncond)
        if cfg.temperature == 0:
            picks.append(l.argmax(dim=-1))
            continue
        probs = torch.softmax(_filter(l / cfg.temperature, cfg), dim=-1)
        picks.append(torch.multinomial(probs, 1, generator=generator).squeeze(1))
    return torch.stack(picks, dim=-1)


@torch.no_grad()
def sample_codes(model: CodeGenerator, cond, batch: int, cfg: SamplingConfig | None = None,
                 prefix: torch.Tensor | None = None, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
    """-> codes (batch, L, columns). prefix (batch, P, columns): the first P codes are given."""
    cfg = cfg or SamplingConfig()
    cfg.check()
    if (cfg.cfg_scale is not None or cfg.null_condition) and not model.guided:
        raise ValueError("cfg_scale and the null condition need a conditional generator (condition caption "
                         "or segmentation)")
    was_training = model.training
    model.eval()
    try:
        return _sample(model, cond, batch, cfg, prefix, generator)
    finally:
        model.train(was_training)


def _sample(model, cond, batch, cfg, prefix, generator) -> torch.Tensor:
    layout = model.layout
    guided = cfg.cfg_scale is not None
    every = torch.ones(batch, dtype=torch.bool, device=model.pos.device)  # the null condition's mask
    cond_tokens = model.condition_tokens(cond, batch, drop=every if cfg.null_condition else None)
    if guided:
        cond_tokens = torch.cat([cond_tokens, model.condition_tokens(cond, batch, drop=every)])
    codes = torch.zeros(batch, layout.length, layout.columns, dtype=torch.long, device=cond_tokens.device)
    start = 0
    if prefix is not None:
        start = prefix.shape[1]
        codes[:, :start] = prefix
    cache = model.new_cache(cond_tokens.shape[0]) if cfg.use_cache else None
    feed = _tokens(model, cond_tokens, codes[:, :start], guided)  # what the model has not seen yet
    for i in range(start, layout.length):
        if cache is None:
            feed = _tokens(model, cond_tokens, codes[:, :i], guided)
        hidden = model.hidden(feed, cache)
        codes[:, i] = _draw([l[:, -1] for l in model.logits([h[:, -1:] for h in hidden])], cfg, generator)
        if cache is not None:
            feed = _embed(model, codes[:, i:i + 1], guided)
    return codes


def _embed(model: CodeGenerator, codes: torch.Tensor, guided: bool) -> torch.Tensor:
    tokens = model.embed_codes(codes)
    return torch.cat([tokens, tokens]) if guided else tokens


def _tokens(model: CodeGenerator, cond_tokens: torch.Tensor, codes: torch.Tensor, guided: bool) -> torch.Tensor:
    if codes.shape[1] == 0:
        return cond_tokens
    return torch.cat([cond_tokens, _embed(model, codes, guided)], dim=1)

