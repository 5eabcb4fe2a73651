"""The per-worker training loop that Ray Train runs on every rank.

It builds the model and engines, restores the latest checkpoint if there is one, streams
batches, steps, logs (rank 0), checkpoints, and evaluates at the end. The step itself
(train/step.py) knows nothing of Ray; the three functions "at the edges" below are the only
places that talk to it. What a checkpoint saves of the run is train/state.py's TrainState.
"""

from __future__ import annotations

import dataclasses
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from vqct.config.schema import TrainerConfig
from vqct.data.loader import NoUsableSamples, make_loader
from vqct.errors import RunStopped
from vqct.host_memory import keep_freed_memory
from vqct.eval.reconstruction import evaluate_reconstruction, to_unit
from vqct.models.discriminator import PatchDiscriminator
from vqct.models.losses import build_perceptual
from vqct.quantize import as_metrics
from vqct.records.checkpoint_integrity import choose_stored_checkpoint
from vqct.records.deepspeed_files import zero_sharded
from vqct.records.run_record import STOP_FILE, write_stop
from vqct.records.storage import local_copy, run_storage
from vqct.seeds import mask_seed, rank_seed
from vqct.text.priors import load_priors
from vqct.tokenizer import build_tokenizer
from vqct.train.checkpoint import load_checkpoint, save_checkpoint
from vqct.train.engines import build_engines, compute_dtype, prepare_batch, zero_stage_for
from vqct.train.numerics import NonFiniteLoss
from vqct.train.spec import RunSummary, WorkerSpec
from vqct.train.state import TrainState
from vqct.train.step import LossWeights, train_micro_step


# ---- Ray Train, at the edges ---------------------------------------------------------------
def ray_rank_and_world() -> tuple[int, int]:
    import ray.train

    ctx = ray.train.get_context()
    return ctx.get_world_rank(), ctx.get_world_size()


def _ray_latest_checkpoint() -> Path | None:
    import ray.train

    latest = ray.train.get_checkpoint()
    return Path(latest.path) if latest else None


def _ray_report(summary: RunSummary, directory: Path) -> None:
    """Hand the checkpoint in DIRECTORY (this rank's part) and the run's figures to Ray Train."""
    import ray.train

    ray.train.report(summary.to_json(), checkpoint=ray.train.Checkpoint.from_directory(str(directory)))


def worker_device(use_gpu: bool) -> torch.device:
    if use_gpu:
        import ray.train.torch

        return ray.train.torch.get_device()
    return torch.device("cpu")


# ---- helpers -------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _all_reduce_counts(quantizer, indices: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Code histograms of this step per codebook group, summed over micro-steps and ranks,
    left on the device (read only when a step's figures are)."""
    per_group: dict[str, torch.Tensor] = {}
    for idx in indices:
        for name, counts in quantizer.code_counts(idx).items():
            per_group[name] = per_group[name] + counts if name in per_group else counts.clone()
    if dist.is_initialized():
        for counts in per_group.values():
            dist.all_reduce(counts)
    return per_group


def read_figures(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    """Device scalars to floats in one transfer (one host sync, not one per metric)."""
    if not metrics:
        return {}
    values = torch.stack([v.float() for v in metrics.values()]).tolist()
    return dict(zip(metrics, values))


class Progress:
    """Rank 0's progress line on stderr; Ray forwards it to the driver's terminal."""

    def __init__(self, start: int, total: int, every_s: float = 10.0,
                 shown: tuple[str, ...] = ("loss/rec_l1", "codebook/usage", "perf/images_per_s")):
        from tqdm import tqdm

        self.shown = shown
        self.bar = tqdm(total=total, initial=start, desc="train", unit="step", file=sys.stderr,
                        mininterval=every_s, dynamic_ncols=False, ncols=100)

    def update(self, metrics: dict) -> None:
        """METRICS: this step's figures, read on the host at log steps only (the postfix
        keeps the last ones in between)."""
        if self.shown[0] in metrics:
            self.bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in metrics.items() if k in self.shown},
                                 refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _last_line(message: str) -> str:
    """A DataLoader process's exception arrives wrapped in its traceback: keep its own line."""
    line = message.strip().splitlines()[-1] if message.strip() else message
    return line.split(": ", 1)[1] if line.startswith("vqct.") and ": " in line else line


# ---- the worker ----------------------------------------------------------------------------
class Worker:
    """One rank: its model, engines and text encoder, and the loop that advances its TrainState."""

    def __init__(self, spec: WorkerSpec, rank: int, world: int):
        self._join(spec, rank, world)
        cfg = self.cfg
        priors = load_priors(local_copy(spec.priors_dir, mirror=f"rank{rank}")) if spec.priors_dir else None
        self.text_encoder = None
        if cfg.align.enabled:  # frozen, outside the engines; the same model the priors use
            from vqct.text.encoders import TextEncoder

            self.text_encoder = TextEncoder(cfg.text.model, cfg.align.context_length, self.device)
        self.restore_from = self._choose_checkpoint()  # before the engines: it decides their ZeRO stage
        self.gen, self.disc = build_engines(
            build_tokenizer(cfg, priors, self.text_encoder),
            PatchDiscriminator(cfg.model.in_channels, cfg.loss.disc_channels, cfg.loss.disc_layers),
            self._engine_settings(), cfg.optim, cfg.data.batch_size,
        )
        seed_everything(rank_seed(cfg.seed, self.rank))  # per-rank randomness from here on
        self.dtype = compute_dtype(cfg.trainer)
        self.perceptual = (build_perceptual(cfg.loss.lpips_net, cfg.loss.lpips_backbone).to(self.device)
                           if cfg.loss.perceptual_weight > 0 else None)
        self.weights = LossWeights.from_config(cfg.loss, cfg.align)
        self.quantizer = self.gen.module.quantizer
        self.state = TrainState.fresh(self.quantizer.groups, cfg.quantizer.usage_window, cfg.trainer.max_bad_steps,
                                      self.device)
        self.mask_generator = torch.Generator().manual_seed(mask_seed(cfg.seed, self.rank))
        self.logger = None
        if self.rank == 0:
            from vqct.tracking.metric_logger import MetricLogger

            self.logger = MetricLogger(cfg.tracking.uri, spec.mlflow_run_id)

    def _join(self, spec: WorkerSpec, rank: int, world: int) -> None:
        """This process's part of the run: threads, device, host memory, the process group,
        and the seed that gives every rank the same initial weights."""
        import deepspeed

        self.spec, self.cfg = spec, spec.config
        self.rank, self.world = rank, world
        # each rank pulls from an object store into a mirror of its own: ranks share nodes
        self.storage, self.run_name = run_storage(spec.run_dir, mirror=f"rank{rank}")
        self.run_dir = self.storage.local / self.run_name
        torch.set_num_threads(max(1, self.cfg.trainer.cpus_per_worker))
        self.device = worker_device(self.cfg.trainer.use_gpu)
        if self.device.type == "cpu" and self.cfg.trainer.keep_host_memory:
            keep_freed_memory()
        deepspeed.init_distributed(dist_backend="nccl" if self.device.type == "cuda" else "gloo")
        torch.manual_seed(self.cfg.seed)

    # ---- checkpoints ---------------------------------------------------------------------
    def _choose_checkpoint(self) -> Path | None:
        """Ray's latest checkpoint if intact, else the newest intact one of the run; rank 0
        decides (and says what it passed over) so that every rank loads the same."""
        choice: list = [None]
        remote = self.storage.remote
        if self.rank == 0:  # Ray's latest, on an object store, is a key there: the scan lists it anyway
            path, rejected = choose_stored_checkpoint(self.storage, self.run_name,
                                                      None if remote else _ray_latest_checkpoint())
            for line in rejected:
                print(f"warning: {line}", file=sys.stderr)
            choice = [str(path) if path else None]
        if dist.is_initialized():
            dist.broadcast_object_list(choice, src=0)
        if choice[0] and remote and self.rank != 0:  # rank 0 verified it; the others pull their copy
            return self.storage.pull(f"{self.run_name}/{Path(choice[0]).name}")
        return Path(choice[0]) if choice[0] else None

    def _engine_settings(self) -> TrainerConfig:
        """cfg.trainer with the ZeRO stage these engines run (train/engines.py: zero_stage_for)."""
        trainer = self.cfg.trainer
        sharded = zero_sharded(self.restore_from / "generator") if self.restore_from else None
        stage = zero_stage_for(trainer, self.world, sharded)
        if stage != trainer.zero_stage and self.rank == 0:
            why = ("the checkpoint to resume was written by stage 0" if sharded is not None else
                   "one worker has nothing to shard (trainer.zero_when_alone=true keeps the stage)")
            print(f"note: trainer.zero_stage={trainer.zero_stage}: running ZeRO stage {stage}, as {why}",
                  file=sys.stderr)
        return dataclasses.replace(trainer, zero_stage=stage)

    def restore(self) -> None:
        directory = self.restore_from
        if directory is None:
            return
        state, windows = load_checkpoint(directory, self.gen, self.disc)
        self.state.restore(state, windows)
        if self.rank == 0:
            print(f"resumed from step {self.state.step} ({directory})", file=sys.stderr)

    def summary(self, metrics: dict) -> RunSummary:
        return self.state.summary(metrics, self.quantizer)

    def save_and_report(self, summary: RunSummary, skipped: dict) -> None:
        state, windows = self.state.to_checkpoint(self.spec, self.world, skipped)
        with tempfile.TemporaryDirectory(prefix="vqct-ckpt-") as tmp:
            save_checkpoint(Path(tmp), self.gen, self.disc, state, windows, self.rank)
            _ray_report(summary, Path(tmp))
        self.state.checkpoint_step = self.state.step

    # ---- steps -------------------------------------------------------------------------------
    def train_step(self, batches, read: bool) -> dict:
        """One optimizer step. READ (log and checkpoint steps): bring the step's losses and
        codebook figures to the host, in one transfer; otherwise they stay on the device
        unread, and only the host's own figures (time, lr) come back."""
        t0 = time.perf_counter()
        indices, sums = [], {}
        accum = self.cfg.trainer.grad_accum
        while len(indices) < accum:
            metrics, idx = self._micro_step(self._next_batch(batches))
            if idx is None:
                continue  # a micro-batch with a non-finite loss: replaced by the next one
            indices.append(idx)
            for k, v in metrics.items():
                sums[k] = sums[k] + v / accum if k in sums else v / accum
        counts = _all_reduce_counts(self.quantizer, indices)
        self.state.count_codes(counts)
        figures = read_figures(sums) if read else {}
        # On a GPU the host runs ahead of the device between reads; the step that reads
        # waits for it, so times summed over a log interval are the device's.
        elapsed = time.perf_counter() - t0
        images = self.world * accum * self.cfg.data.batch_size
        self.state.finish_step(images, elapsed)
        if read:
            figures.update(as_metrics(self.quantizer.usage_stats(self.state.usage_totals(), counts)))
            figures.update({f"codebook/{k}": v for k, v in self.quantizer.pair_stats(indices[-1]).items()})
        figures.update({
            "perf/step_time_s": elapsed,
            "perf/images_per_s": images / elapsed,
            "lr": self.gen.get_lr()[0],
        })
        return figures

    def _next_batch(self, batches):
        """The next batch, or RunStopped on every rank when any rank's shards are all bad
        (one rank stopping alone would leave the others waiting in a collective)."""
        try:
            batch, problem = next(batches), ""
        except NoUsableSamples as exc:
            batch, problem = None, str(exc)
        if self.world == 1:  # nobody to agree with: no collective, no host read of the device
            if problem:
                raise RunStopped(problem)
            return batch
        flag = torch.tensor([1 if problem else 0], device=self.device)
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if int(flag):
            raise RunStopped(problem or "another rank found no usable sample in its shards")
        return batch

    def _micro_step(self, batch):
        """(metrics, code indices), or (None, None) when the batch's loss was not finite."""
        images = prepare_batch(batch.images.to(self.device).to(self.dtype), self.cfg.trainer)
        text, masked = self._captions(batch.captions)
        skipped = self.gen.skipped_steps + self.disc.skipped_steps
        guard, step = self.state.guard, self.state.step
        try:
            metrics, idx = train_micro_step(self.gen, self.disc, self.perceptual, images, step, self.weights,
                                            text, masked)
        except NonFiniteLoss as bad:
            guard.bad_loss(bad.term, step + 1, self.state.checkpoint_step)
            return None, None
        if self.gen.skipped_steps + self.disc.skipped_steps > skipped:  # DeepSpeed's overflow skip
            guard.bad_gradient(step + 1, self.state.checkpoint_step)
        else:
            guard.good()
        return metrics, idx

    def _skipped(self, loader) -> dict:
        """Data skip counts summed over ranks, plus those of earlier attempts of this run."""
        before = self.state.skipped_before
        kinds = sorted(set(loader.skipped) | set(before) - {"total"})
        counts = torch.tensor([loader.skipped.get(k, 0) for k in kinds], dtype=torch.long, device=self.device)
        if dist.is_initialized():
            dist.all_reduce(counts)
        totals = {k: int(n) + before.get(k, 0) for k, n in zip(kinds, counts.tolist())}
        totals["total"] = sum(totals.values())
        return totals

    def _captions(self, captions: list[str]):
        """Frozen text features of the batch's captions and LG-VQ's masked positions (with the
        features of the masked captions, unless the recipe asks for the official construction)."""
        if self.text_encoder is None:
            return None, None
        from vqct.align.lgvq import choose_masked, mask_ratio, masked_caption_tokens

        text = self.text_encoder.encode(captions)
        masked = choose_masked(text["words"], mask_ratio(self.mask_generator), self.mask_generator)
        lgvq = self.cfg.align.lgvq
        if lgvq.enabled and lgvq.encode_masked_caption:
            text["masked_tokens"] = masked_caption_tokens(self.text_encoder, text, masked)
        return text, masked

    def evaluate(self, val_loader) -> dict:
        results, first = evaluate_reconstruction(self.gen, iter(val_loader), self.cfg.data.val_batches,
                                                  self.device, self.dtype)
        if self.rank == 0 and first is not None:
            self._log_grid(*first, name=f"reconstructions/val_step{self.state.step:07d}.png")
        return {f"val/{k}": v for k, v in results.items()}

    def _log_grid(self, images: torch.Tensor, recon: torch.Tensor, name: str) -> None:
        from vqct.eval.grid import reconstruction_grid

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(name).name
            reconstruction_grid(to_unit(images), to_unit(recon)).save(path)
            self.logger.log_artifact(path, str(Path(name).parent))

    # ---- the loop ----------------------------------------------------------------------------
    progress_keys = ("loss/rec_l1", "codebook/usage", "perf/images_per_s")

    def loaders(self):
        """(train, val) loaders. A resumed run starts a fresh shuffle (epoch seed from the
        step), not a replay."""
        cfg = self.cfg
        return (make_loader(self.spec.train_urls, cfg.data, cfg.seed, train=True, start_epoch=self.state.step),
                make_loader(self.spec.val_urls, cfg.data, cfg.seed, train=False))

    def run(self) -> None:
        spec, cfg = self.spec, self.cfg
        self.restore()
        if self.logger is not None:  # the stage these engines run, beside the configured one (a param)
            self.logger.log({"perf/zero_stage": self.gen.zero_optimization_stage()}, self.state.step, force=True)
        train_loader, val_loader = self.loaders()
        progress = None
        if self.rank == 0:
            progress = Progress(self.state.step, cfg.trainer.max_steps, shown=self.progress_keys)
        system = None
        if self.rank == 0 and cfg.tracking.system_metrics:
            from vqct.tracking.system_metrics import start_system_metrics

            system = start_system_metrics(cfg.tracking.uri, spec.mlflow_run_id, cfg.tracking.system_metrics_interval_s,
                                          resumed=self.state.step > 0)
        try:
            self._train(train_loader, val_loader, progress)
        except RunStopped as exc:
            # Left in the run directory for the driver, not raised: Ray Train would restart
            # the workers from the same checkpoint and data, only to fail the same way.
            if self.rank == 0:
                self.logger.log(self.state.guard.metrics(), self.state.step, force=True)
                write_stop(self.run_dir, self.state.step, _last_line(str(exc)))
                self.storage.push(f"{self.run_name}/{STOP_FILE}")
        finally:
            if progress:
                progress.close()
            if system:
                system.stop()
            if self.logger:
                self.logger.flush()

    def _train(self, train_loader, val_loader, progress) -> None:
        t, state = self.cfg.trainer, self.state
        batches = iter(train_loader)
        while state.step < t.max_steps:
            upcoming = state.step + 1
            last = upcoming == t.max_steps
            evaluate = upcoming % t.image_every == 0 or last
            save = upcoming % t.checkpoint_every == 0 or last
            log_now = upcoming == 1 or upcoming % t.log_every == 0 or evaluate
            metrics = self.train_step(batches, read=log_now or save)
            if evaluate:
                metrics.update(self.evaluate(val_loader))
            skipped = self._skipped(train_loader) if log_now or save else {}  # a collective: all ranks
            metrics.update({f"data/skipped_{k}": float(n) for k, n in skipped.items()})
            metrics.update(state.guard.metrics())
            if self.rank == 0:
                progress.update(metrics)
                if log_now:
                    self.logger.log(metrics, state.step)
            if save:
                self.save_and_report(self.summary(metrics), skipped)


def stdout_to_stderr() -> None:
    """Ray forwards a worker's stdout to the driver's stdout, where the run's final JSON line
    must stay last: send everything this worker prints (libraries too, at the file
    descriptor level) to stderr instead."""
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train's entry point; LOOP_CONFIG is {"spec": WorkerSpec} (Ray passes a dict)."""
    stdout_to_stderr()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    Worker(loop_config["spec"], *ray_rank_and_world()).run()
