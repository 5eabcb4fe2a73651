"""The per-worker training loop that Ray Train runs on every rank.

It builds the model and engines, restores the latest checkpoint if there is one, streams
batches, steps, logs (rank 0), checkpoints, and evaluates at the end. The step itself
(train/step.py) knows nothing of Ray; this loop is the only place that talks to it.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from vqct.align.heads import context_length
from vqct.align.heads import enabled as align_enabled
from vqct.data.loader import NoUsableSamples, make_loader
from vqct.errors import RunStopped
from vqct.eval.reconstruction import evaluate_reconstruction, to_unit
from vqct.launch.runs import write_stop
from vqct.models.discriminator import PatchDiscriminator
from vqct.models.losses import build_perceptual
from vqct.quantize import CodebookUsage, perplexity
from vqct.text.priors import load_priors
from vqct.tokenizer import build_tokenizer
from vqct.train.checkpoint import load_checkpoint, save_checkpoint
from vqct.train.checkpoint_integrity import choose_checkpoint
from vqct.train.engines import build_engines, compute_dtype
from vqct.train.numerics import NonFiniteGuard, NonFiniteLoss
from vqct.train.step import LossWeights, train_micro_step


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _device(use_gpu: bool) -> torch.device:
    if use_gpu:
        import ray.train.torch

        return ray.train.torch.get_device()
    return torch.device("cpu")


def _all_reduce_counts(quantizer, indices: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Code histograms of this step per codebook group, summed over micro-steps and ranks."""
    per_group: dict[str, torch.Tensor] = {}
    for idx in indices:
        for name, counts in quantizer.code_counts(idx).items():
            per_group[name] = per_group[name] + counts if name in per_group else counts.clone()
    if dist.is_initialized():
        for counts in per_group.values():
            dist.all_reduce(counts)
    return {name: counts.cpu() for name, counts in per_group.items()}


def usage_metrics(usage: dict[str, CodebookUsage], counts: dict[str, torch.Tensor]) -> dict[str, float]:
    """One group (vq): codebook/usage and codebook/perplexity. Several (vqct): the same per
    group with a suffix, plus the overall usage across all codes."""
    if list(usage) == ["codes"]:
        return {"codebook/usage": usage["codes"].usage, "codebook/perplexity": perplexity(counts["codes"])}
    out = {}
    for name, tracker in usage.items():
        out[f"codebook/usage_{name}"] = tracker.usage
        out[f"codebook/perplexity_{name}"] = perplexity(counts[name])
    hit = sum(float((t.total > 0).sum()) for t in usage.values())
    out["codebook/usage"] = hit / sum(t.codebook_size for t in usage.values())
    return out


class Progress:
    """Rank 0's progress line on stderr; Ray forwards it to the driver's terminal."""

    def __init__(self, start: int, total: int, every_s: float = 10.0):
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=start, desc="train", unit="step", file=sys.stderr,
                        mininterval=every_s, dynamic_ncols=False, ncols=100)

    def update(self, metrics: dict) -> None:
        self.bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in metrics.items()
                              if k in ("loss/rec_l1", "codebook/usage", "perf/images_per_s")}, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


class Worker:
    """State of one rank's training run."""

    def __init__(self, config: dict):
        import deepspeed
        import ray.train

        self.cfg = cfg = config["cfg"]
        self.run_id = config["mlflow_run_id"]
        self.run_dir = Path(config["run_dir"])
        self.train_urls, self.val_urls = config["train_urls"], config["val_urls"]
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        torch.set_num_threads(max(1, cfg["trainer"]["cpus_per_worker"]))
        self.device = _device(cfg["trainer"]["use_gpu"])
        deepspeed.init_distributed(dist_backend="nccl" if self.device.type == "cuda" else "gloo")
        torch.manual_seed(cfg["seed"])  # identical initial weights on every rank
        self.priors_dir = config.get("priors_dir")
        priors = load_priors(self.priors_dir) if self.priors_dir else None
        self.text_encoder = None
        if align_enabled(cfg):  # frozen, outside the engines; the same model the priors use
            from vqct.text.encoders import TextEncoder

            self.text_encoder = TextEncoder(cfg["text"]["model"], context_length(cfg), self.device)
        self.gen, self.disc = build_engines(
            build_tokenizer(cfg, priors, self.text_encoder),
            PatchDiscriminator(cfg["model"]["in_channels"], cfg["loss"]["disc_channels"], cfg["loss"]["disc_layers"]),
            cfg,
        )
        _seed_everything(cfg["seed"] + self.rank)  # per-rank randomness from here on
        self.dtype = compute_dtype(cfg)
        loss = cfg["loss"]
        self.perceptual = (build_perceptual(loss["lpips_net"], loss["lpips_backbone"]).to(self.device)
                           if loss["perceptual_weight"] > 0 else None)
        self.weights = LossWeights.from_cfg(loss, cfg["align"])
        self.quantizer = self.gen.module.quantizer
        window = cfg["quantizer"]["usage_window"]
        self.usage = {name: CodebookUsage(size, window) for name, size in self.quantizer.groups.items()}
        self.step = 0
        self.images_seen = 0
        self.train_seconds = 0.0
        self.checkpoint_step = None  # step of the last checkpoint saved or restored
        self.skipped_before = {}  # data skip counts of earlier attempts, from the checkpoint
        self.guard = NonFiniteGuard(cfg["trainer"]["max_bad_steps"])
        self.logger = None
        if self.rank == 0:
            from vqct.tracking.metric_logger import MetricLogger

            self.logger = MetricLogger(cfg["tracking"]["uri"], self.run_id)

    # ---- checkpoints ---------------------------------------------------------------
    def _choose_checkpoint(self) -> Path | None:
        """Ray's latest checkpoint if intact, else the newest intact one of the run; rank 0
        decides (and says what it passed over) so that every rank loads the same."""
        import ray.train

        latest = ray.train.get_checkpoint()
        choice: list = [None]
        if self.rank == 0:
            path, rejected = choose_checkpoint(self.run_dir, Path(latest.path) if latest else None)
            for line in rejected:
                print(f"warning: {line}", file=sys.stderr)
            choice = [str(path) if path else None]
        if dist.is_initialized():
            dist.broadcast_object_list(choice, src=0)
        return Path(choice[0]) if choice[0] else None

    def restore(self) -> None:
        directory = self._choose_checkpoint()
        if directory is None:
            return
        state, windows = load_checkpoint(directory, self.gen, self.disc)
        self.step = self.checkpoint_step = state["step"]
        self.images_seen = state.get("images_seen", 0)
        self.train_seconds = state.get("train_seconds", 0.0)
        self.skipped_before = state.get("skipped", {})
        numerics = state.get("numerics", {})
        self.guard = NonFiniteGuard(self.guard.limit, numerics.get("skipped_batches", 0),
                                    numerics.get("skipped_steps", 0))
        for name, tracker in self.usage.items():
            tracker.restore(windows.get(name, []))
        if self.rank == 0:
            print(f"resumed from step {self.step} ({directory})", file=sys.stderr)

    def save_and_report(self, metrics: dict, skipped: dict) -> None:
        import ray.train

        state = {"step": self.step, "world_size": self.world, "mlflow_run_id": self.run_id,
                 "images_seen": self.images_seen, "train_seconds": self.train_seconds,
                 "recipe": self.cfg["recipe"], "config": self.cfg, "priors_dir": self.priors_dir,
                 "skipped": skipped, "numerics": {"skipped_batches": self.guard.skipped_batches,
                                                  "skipped_steps": self.guard.skipped_steps}}
        with tempfile.TemporaryDirectory(prefix="vqct-ckpt-") as tmp:
            windows = {name: list(t.window) for name, t in self.usage.items()}
            save_checkpoint(Path(tmp), self.gen, self.disc, state, windows, self.rank)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        self.checkpoint_step = self.step

    # ---- steps -----------------------------------------------------------------------
    def train_step(self, batches) -> dict:
        t0 = time.perf_counter()
        indices, sums = [], {}
        accum = self.cfg["trainer"]["grad_accum"]
        while len(indices) < accum:
            metrics, idx = self._micro_step(self._next_batch(batches))
            if idx is None:
                continue  # a micro-batch with a non-finite loss: replaced by the next one
            indices.append(idx)
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v / accum
        counts = _all_reduce_counts(self.quantizer, indices)
        for name, tracker in self.usage.items():
            tracker.update(counts[name])
        elapsed = time.perf_counter() - t0
        images = self.world * accum * self.cfg["data"]["batch_size"]
        self.step += 1
        if self.step > 1:  # the first step pays for warm-up: leave it out of the throughput
            self.images_seen += images
            self.train_seconds += elapsed
        sums.update(usage_metrics(self.usage, counts))
        sums.update({f"codebook/{k}": v for k, v in self.quantizer.pair_stats(indices[-1]).items()})
        sums.update({
            "perf/step_time_s": elapsed,
            "perf/images_per_s": images / elapsed,
            "lr": self.gen.get_lr()[0],
        })
        return sums

    def _next_batch(self, batches):
        """The next batch, or RunStopped on every rank when any rank's shards are all bad
        (one rank stopping alone would leave the others waiting in a collective)."""
        try:
            batch, problem = next(batches), ""
        except NoUsableSamples as exc:
            batch, problem = None, str(exc)
        flag = torch.tensor([1 if problem else 0], device=self.device)
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if int(flag):
            raise RunStopped(problem or "another rank found no usable sample in its shards")
        return batch

    def _micro_step(self, batch):
        """(metrics, code indices), or (None, None) when the batch's loss was not finite."""
        images = batch.images.to(self.device).to(self.dtype)
        text, masked = self._captions(batch.captions)
        skipped = self.gen.skipped_steps + self.disc.skipped_steps
        try:
            metrics, idx, _ = train_micro_step(self.gen, self.disc, self.perceptual, images, self.step,
                                               self.weights, text, masked)
        except NonFiniteLoss as bad:
            self.guard.bad_loss(bad.term, self.step + 1, self.checkpoint_step)
            return None, None
        if self.gen.skipped_steps + self.disc.skipped_steps > skipped:  # DeepSpeed's overflow skip
            self.guard.bad_gradient(self.step + 1, self.checkpoint_step)
        else:
            self.guard.good()
        return metrics, idx

    def _skipped(self, loader) -> dict:
        """Data skip counts summed over ranks, plus those of earlier attempts of this run."""
        kinds = sorted(set(loader.skipped) | set(self.skipped_before) - {"total"})
        counts = torch.tensor([loader.skipped.get(k, 0) for k in kinds], dtype=torch.long, device=self.device)
        if dist.is_initialized():
            dist.all_reduce(counts)
        totals = {k: int(n) + self.skipped_before.get(k, 0) for k, n in zip(kinds, counts.tolist())}
        totals["total"] = sum(totals.values())
        return totals

    def _captions(self, captions: list[str]):
        """Frozen text features of the batch's captions and LG-VQ's masked positions."""
        if self.text_encoder is None:
            return None, None
        from vqct.align.lgvq import choose_masked, mask_ratio

        text = self.text_encoder.encode(captions)
        return text, choose_masked(text["words"], mask_ratio())

    def evaluate(self, val_loader) -> dict:
        cfg = self.cfg
        results, first = evaluate_reconstruction(self.gen, iter(val_loader), cfg["data"]["val_batches"],
                                                  self.device, self.dtype)
        if self.rank == 0 and first is not None:
            self._log_grid(*first, name=f"reconstructions/val_step{self.step:07d}.png")
        return {f"val/{k}": v for k, v in results.items()}

    def _log_grid(self, images: torch.Tensor, recon: torch.Tensor, name: str) -> None:
        from torchvision.utils import save_image

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(name).name
            save_image(torch.cat([to_unit(images), to_unit(recon)]), path, nrow=images.shape[0])
            self.logger.log_artifact(path, str(Path(name).parent))

    def run(self) -> None:
        cfg, t = self.cfg, self.cfg["trainer"]
        self.restore()
        # A resumed run starts a fresh shuffle (epoch seed from the step), not a replay.
        train_loader = make_loader(self.train_urls, cfg["data"], cfg["seed"], train=True, start_epoch=self.step)
        val_loader = make_loader(self.val_urls, cfg["data"], cfg["seed"], train=False)
        progress = Progress(self.step, t["max_steps"]) if self.rank == 0 else None
        try:
            self._train(train_loader, val_loader, progress)
        except RunStopped as exc:
            # Left in the run directory for the driver, not raised: Ray Train would restart
            # the workers from the same checkpoint and data, only to fail the same way.
            if self.rank == 0:
                self.logger.log(self.guard.metrics(), self.step, force=True)
                write_stop(self.run_dir, self.step, _last_line(str(exc)))
        finally:
            if progress:
                progress.close()
            if self.logger:
                self.logger.flush()

    def _train(self, train_loader, val_loader, progress) -> None:
        t = self.cfg["trainer"]
        batches = iter(train_loader)
        while self.step < t["max_steps"]:
            metrics = self.train_step(batches)
            last = self.step == t["max_steps"]
            if self.step % t["image_every"] == 0 or last:
                metrics.update(self.evaluate(val_loader))
            save = self.step % t["checkpoint_every"] == 0 or last
            log_now = self.step == 1 or self.step % t["log_every"] == 0 or last or "val/psnr" in metrics
            skipped = self._skipped(train_loader) if log_now or save else {}  # a collective: all ranks
            metrics.update({f"data/skipped_{k}": float(n) for k, n in skipped.items()})
            metrics.update(self.guard.metrics())
            if self.rank == 0:
                progress.update(metrics)
                if log_now:
                    self.logger.log(metrics, self.step)
            if save:
                self.save_and_report(self.summary(metrics), skipped)

    def summary(self, metrics: dict) -> dict:
        per_group = {}
        if len(self.usage) > 1:
            for name, tracker in self.usage.items():
                per_group[f"codebook_usage_{name}"] = tracker.usage
                per_group[f"perplexity_{name}"] = tracker.window_perplexity
        return {
            "step": self.step,
            "psnr": metrics.get("val/psnr"),
            "ssim": metrics.get("val/ssim"),
            "val_l1": metrics.get("val/l1"),
            "codebook_usage": metrics.get("codebook/usage"),
            **per_group,
            "perplexity": None if per_group else self.usage["codes"].window_perplexity,
            "images_per_s": self.images_seen / self.train_seconds if self.train_seconds else None,
            "rec_l1": metrics.get("loss/rec_l1"),
        }


def _last_line(message: str) -> str:
    """A DataLoader process's exception arrives wrapped in its traceback: keep its own line."""
    line = message.strip().splitlines()[-1] if message.strip() else message
    return line.split(": ", 1)[1] if line.startswith("vqct.") and ": " in line else line


def _stdout_to_stderr() -> None:
    """Ray forwards a worker's stdout to the driver's stdout, where the run's final JSON line
    must stay last: send everything this worker prints (libraries too, at the file
    descriptor level) to stderr instead."""
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr


def train_loop_per_worker(config: dict) -> None:
    _stdout_to_stderr()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    Worker(config).run()
