"""The typed settings of a downstream model over frozen codes (`vqct downstream vqa|caption`):
the same sizes, steps and seed for every tokenizer compared, set with `key=value` overrides.
A key the task does not read is an error naming the keys it does read."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vqct.config.schema import require_positive
from vqct.errors import UserError

TASKS = ("vqa", "caption")
FEATURES = ("vectors", "indices")
PRECISIONS = ("fp32", "bf16")


@dataclass
class DownstreamConfig:
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    width: int = 128
    layers: int = 2
    heads: int = 4
    dropout: float = 0.1
    features: str = "vectors"  # the tokenizer's frozen code vectors, or "indices" (a learned table)
    patch: int = 2  # grid cells per side read as one image token (16 x 16 codes -> 64 tokens)
    seed: int = 0
    # The control: every image's codes swapped for another image's (a seeded permutation, in
    # training and at test), so a score above this one is what the codes themselves add.
    shuffle_images: bool = False
    train_limit: Optional[int] = None  # read only the first N training samples (quick runs)
    eval_limit: Optional[int] = None
    # bf16: the training steps under autocast (weights, optimizer and evaluation stay fp32)
    precision: str = "fp32"


@dataclass
class VQASettings(DownstreamConfig):
    # on tokenizers' codes the training loss is flat from step ~150 and 1,500 steps answer as
    # well as 3,000 (docs/results.md); on ground truth most is learned by 1,500
    steps: int = 1500
    question_length: int = 16  # words; longer questions are cut


@dataclass
class CaptionSettings(DownstreamConfig):
    caption_length: int = 24  # words with <bos> and <eos>; longer captions are cut
    meteor: bool = True  # where Java runs


SETTINGS = {"vqa": VQASettings, "caption": CaptionSettings}


def _check(cfg: DownstreamConfig, task: str) -> None:
    require_positive(task, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, width=cfg.width,
                     layers=cfg.layers, heads=cfg.heads, patch=cfg.patch)
    if cfg.features not in FEATURES:
        raise UserError(f"{task}: features={cfg.features!r}: give one of {', '.join(FEATURES)}")
    if cfg.precision not in PRECISIONS:
        raise UserError(f"{task}: precision={cfg.precision!r}: give one of {', '.join(PRECISIONS)}")
    if cfg.width % cfg.heads:
        raise UserError(f"{task}: width={cfg.width} is not a multiple of heads={cfg.heads}")
    if not 0 <= cfg.dropout < 1:
        raise UserError(f"{task}: dropout={cfg.dropout} must be in [0, 1)")


def downstream_config(task: str, overrides: list[str]) -> DownstreamConfig:
    """TASK's settings with OVERRIDES (`key=value`) applied; UserError on a key it does not read."""
    if task not in SETTINGS:
        raise UserError(f"downstream task {task!r}: give one of {', '.join(TASKS)}")
    root = SETTINGS[task]
    known = [f.name for f in fields(root)]
    for item in overrides:
        key = item.split("=", 1)[0]
        if "=" not in item or key not in known:
            raise UserError(f"{task}: {item!r} is not a setting it reads; give key=value with key one of "
                            f"{', '.join(known)}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(root), OmegaConf.from_dotlist(overrides))
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise UserError(f"{task}: {str(exc).splitlines()[0]}") from None
    _check(cfg, task)
    return cfg
