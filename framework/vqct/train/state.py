"""What one rank's run is at, besides its engines: the step, throughput counters, codebook
usage windows, non-finite counters and data skip counts of earlier attempts. A checkpoint
saves it (train/checkpoint.py) and a restart restores it."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vqct.config.typed import config_to_dict
from vqct.quantize import CodebookUsage
from vqct.train.numerics import NonFiniteGuard
from vqct.train.spec import RunSummary, WorkerSpec


@dataclass
class TrainState:
    usage: dict[str, CodebookUsage]  # per codebook group, over the last quantizer.usage_window steps
    guard: NonFiniteGuard
    step: int = 0
    images_seen: int = 0  # after the first step, which pays for warm-up
    train_seconds: float = 0.0
    checkpoint_step: int | None = None  # step of the last checkpoint saved or restored
    skipped_before: dict = field(default_factory=dict)  # data skip counts of earlier attempts of this run

    @classmethod
    def fresh(cls, groups: dict[str, int], window: int, max_bad_steps: int,
              device: torch.device | str = "cpu") -> "TrainState":
        return cls({name: CodebookUsage(size, window, device) for name, size in groups.items()},
                   NonFiniteGuard(max_bad_steps))

    def usage_totals(self) -> dict[str, torch.Tensor]:
        return {name: tracker.total for name, tracker in self.usage.items()}

    def count_codes(self, counts: dict[str, torch.Tensor]) -> None:
        for name, tracker in self.usage.items():
            tracker.update(counts[name])

    def finish_step(self, images: int, seconds: float) -> None:
        self.step += 1
        if self.step > 1:  # the first step pays for warm-up: leave it out of the throughput
            self.images_seen += images
            self.train_seconds += seconds

    def to_checkpoint(self, spec: WorkerSpec, world_size: int, skipped: dict) -> tuple[dict, dict[str, list]]:
        """(the JSON state, the usage windows), as train/checkpoint.save_checkpoint takes them."""
        state = {"step": self.step, "world_size": world_size, "mlflow_run_id": spec.mlflow_run_id,
                 "images_seen": self.images_seen, "train_seconds": self.train_seconds,
                 "recipe": spec.config.recipe, "config": config_to_dict(spec.config), "priors_dir": spec.priors_dir,
                 "skipped": skipped, "numerics": {"skipped_batches": self.guard.skipped_batches,
                                                  "skipped_steps": self.guard.skipped_steps}}
        if spec.code_set is not None:  # stage 2: the layout and tokenizer its codes need
            state["code_set"] = spec.code_set
        return state, {name: [c.cpu() for c in tracker.window] for name, tracker in self.usage.items()}

    def restore(self, state: dict, windows: dict[str, list]) -> None:
        self.step = self.checkpoint_step = state["step"]
        self.images_seen = state.get("images_seen", 0)
        self.train_seconds = state.get("train_seconds", 0.0)
        self.skipped_before = state.get("skipped", {})
        numerics = state.get("numerics", {})
        self.guard = NonFiniteGuard(self.guard.limit, numerics.get("skipped_batches", 0),
                                    numerics.get("skipped_steps", 0))
        for name, tracker in self.usage.items():
            tracker.restore(windows.get(name, []))

    def summary(self, metrics: dict, quantizer) -> RunSummary:
        """The figures of the run so far (METRICS: this step's), for the final JSON line."""
        stats = quantizer.usage_stats(self.usage_totals())
        groups = {k: v for k, v in stats.items() if k not in ("codebook_usage", "perplexity")}
        return RunSummary(
            codes=sum(quantizer.groups.values()), steps=self.step, psnr=metrics.get("val/psnr"),
            ssim=metrics.get("val/ssim"), val_l1=metrics.get("val/l1"), codebook_usage=stats["codebook_usage"],
            codebook_groups=groups, perplexity=stats.get("perplexity"),
            images_per_s=self.images_seen / self.train_seconds if self.train_seconds else None,
            rec_l1=metrics.get("loss/rec_l1"))
