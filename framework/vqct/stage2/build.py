"""A generator recipe's model: its typed config and the code set's layout -> CodeGenerator."""

from __future__ import annotations

from vqct.config.generator import CaptionConditionConfig, GeneratorConfig, SegmentationConditionConfig
from vqct.stage2.generator import CodeGenerator, CodeLayout


def build_generator(cfg: GeneratorConfig, layout: CodeLayout, text_dim: int = 0) -> CodeGenerator:
    """TEXT_DIM: the caption model's token width (caption condition only)."""
    g, cond = cfg.generator, cfg.condition
    extra = {}
    if isinstance(cond, CaptionConditionConfig):
        extra = {"text_dim": text_dim, "caption_tokens": cond.tokens}
    elif isinstance(cond, SegmentationConditionConfig):
        extra = {"seg_classes": cond.classes}
    return CodeGenerator(layout, cond.name, n_layer=g.n_layer, n_head=g.n_head, n_embd=g.n_embd, dropout=g.dropout,
                         branch_layers=g.branch_layers, **extra)
