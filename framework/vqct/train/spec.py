"""What crosses the Ray boundary, typed: the spec the driver hands every worker, and the
summary of the run's figures that comes back and is printed as the final JSON line."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from vqct.config.schema import Config


@dataclass
class WorkerSpec:
    """What every Ray Train worker needs besides its rank."""
    config: Config
    mlflow_run_id: str
    run_dir: str
    train_urls: list[str]
    val_urls: list[str]
    priors_dir: Optional[str] = None  # the text priors cache (vqct quantizer), built by the driver
    code_set: Optional[dict] = None  # stage 2: the code shards' layout and tokenizer directory


# Keys of per-group codebook statistics (vqct: _adj, _noun), which the summary carries flat.
_GROUP_PREFIXES = ("codebook_usage_", "perplexity_")


@dataclass
class RunSummary:
    """Every key of a training run's final JSON line, defined once. Rank 0 fills the figures and
    reports them with each checkpoint; the driver adds the run's identity, its final checkpoint
    and its model version."""
    run_id: Optional[str] = None
    run_name: Optional[str] = None
    recipe: Optional[str] = None
    family: Optional[str] = None
    seed: Optional[int] = None
    codes: Optional[int] = None  # the codebook's size as trained (vqct: adjectives + nouns)
    steps: Optional[int] = None
    psnr: Optional[float] = None
    ssim: Optional[float] = None
    val_l1: Optional[float] = None
    codebook_usage: Optional[float] = None
    codebook_groups: dict[str, float] = field(default_factory=dict)  # codebook_usage_<g>, perplexity_<g>
    perplexity: Optional[float] = None  # one codebook group only
    images_per_s: Optional[float] = None
    rec_l1: Optional[float] = None
    checkpoint: Optional[str] = None
    model_version: Optional[str] = None
    tracking_uri: Optional[str] = None

    def to_json(self) -> dict[str, Any]:
        """Flat, in field order, the per-group statistics where codebook_groups stands."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "codebook_groups":
                out.update(value)
            else:
                out[f.name] = value
        return out

    @classmethod
    def from_json(cls, flat: dict[str, Any]) -> "RunSummary":
        names = {f.name for f in dataclasses.fields(cls)} - {"codebook_groups"}
        groups = {k: v for k, v in flat.items() if k.startswith(_GROUP_PREFIXES)}
        return cls(**{k: v for k, v in flat.items() if k in names}, codebook_groups=groups)


@dataclass
class GeneratorSummary:
    """Every key of a generator run's final JSON line (stage 2)."""
    run_id: Optional[str] = None
    run_name: Optional[str] = None
    recipe: Optional[str] = None
    family: Optional[str] = None
    seed: Optional[int] = None
    steps: Optional[int] = None
    loss: Optional[float] = None  # training cross-entropy (summed over index columns) at the last step
    val_loss: Optional[float] = None
    condition_gain: Optional[float] = None  # nats: val loss with the null condition less with its own
    tokens_per_s: Optional[float] = None
    tokenizer: Optional[str] = None  # the code set's tokenizer digest
    checkpoint: Optional[str] = None
    model_version: Optional[str] = None
    tracking_uri: Optional[str] = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, flat: dict[str, Any]) -> "GeneratorSummary":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in flat.items() if k in names})
