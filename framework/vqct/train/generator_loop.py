"""The per-worker loop of a stage-2 generator run: the tokenizer loop (train/loop.py) with one
engine, code shards instead of images, and cross-entropy instead of the VQGAN losses.

Everything a run guarantees comes from the shared Worker: Ray Train's checkpoints and restarts,
the intact-checkpoint choice, step-exact resume, non-finite guards, skip counts, rank-0 MLflow
logging. What differs is here: building the generator, a step, the held-out loss, and a grid of
samples decoded by the code set's own tokenizer.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from vqct.config.generator import CaptionConditionConfig, NoConditionConfig, SegmentationConditionConfig
from vqct.data.code_loader import CodeDecoder, make_code_loader
from vqct.records.storage import local_copy
from vqct.seeds import mask_seed, rank_seed
from vqct.stage2.build import build_generator
from vqct.stage2.captions import caption_features, text_width
from vqct.stage2.generator import CodeLayout, own_and_null_losses
from vqct.stage2.sampling import SamplingConfig, sample_codes
from vqct.train.engines import build_generator_engine
from vqct.train.loop import Worker, ray_rank_and_world, read_figures, seed_everything, stdout_to_stderr
from vqct.train.generator_step import generator_micro_step
from vqct.train.numerics import NonFiniteLoss
from vqct.train.spec import GeneratorSummary, WorkerSpec
from vqct.train.state import TrainState


class GeneratorWorker(Worker):
    progress_keys = ("loss/ce", "perf/tokens_per_s")

    def __init__(self, spec: WorkerSpec, rank: int, world: int):
        # not super().__init__: that builds a tokenizer and a discriminator
        self._join(spec, rank, world)
        cfg = self.cfg
        self.layout = CodeLayout.from_dict(spec.code_set["layout"])
        self.text_encoder, text_dim = None, 0
        if isinstance(cfg.condition, CaptionConditionConfig):
            from vqct.text.encoders import TextEncoder

            # + 2: the model's start and end tokens around the caption's word pieces
            self.text_encoder = TextEncoder(cfg.condition.text_model, cfg.condition.tokens + 2, self.device)
            text_dim = text_width(self.text_encoder)
        model = build_generator(cfg, self.layout, text_dim)
        self.restore_from = self._choose_checkpoint()
        self.gen = build_generator_engine(model, self._engine_settings(), cfg.optim, cfg.data.batch_size)
        self.disc, self.quantizer, self.perceptual = None, None, None
        seed_everything(rank_seed(cfg.seed, self.rank))
        self.drop_generator = torch.Generator().manual_seed(mask_seed(cfg.seed, self.rank))
        self.state = TrainState.fresh({}, 1, cfg.trainer.max_bad_steps, self.device)
        self.tokenizer = None  # the code set's decoder, loaded on rank 0 for the first grid
        self.logger = None
        if self.rank == 0:
            from vqct.tracking.metric_logger import MetricLogger

            self.logger = MetricLogger(cfg.tracking.uri, spec.mlflow_run_id)

    # ---- data --------------------------------------------------------------------------------
    def loaders(self):
        cfg, layout = self.cfg, self.layout
        classes = cfg.condition.classes if isinstance(cfg.condition, SegmentationConditionConfig) else 0
        decoder = CodeDecoder(layout.height, layout.width, layout.columns, classes)
        d = cfg.data
        return (make_code_loader(self.spec.train_urls, decoder, d.batch_size, d.num_workers, cfg.seed,
                                 d.shuffle_buffer, start_epoch=self.state.step),
                make_code_loader(self.spec.val_urls, decoder, d.batch_size, d.num_workers, cfg.seed))

    def _condition(self, batch):
        cond = self.cfg.condition
        if isinstance(cond, CaptionConditionConfig):
            feats = caption_features(self.text_encoder, batch.captions, cond.tokens)
            return {k: v.to(self.device) for k, v in feats.items()}
        if isinstance(cond, SegmentationConditionConfig):
            return batch.segmentation.to(self.device)
        return None

    def _dropped(self, batch_size: int) -> torch.Tensor | None:
        """Which samples train with the null condition (for guidance at sampling)."""
        p = self.cfg.condition.dropout
        if isinstance(self.cfg.condition, NoConditionConfig) or p <= 0:
            return None
        return (torch.rand(batch_size, generator=self.drop_generator) < p).to(self.device)

    # ---- steps -------------------------------------------------------------------------------
    def train_step(self, batches, read: bool) -> dict:
        t0 = time.perf_counter()
        accum, done, sums = self.cfg.trainer.grad_accum, 0, {}
        while done < accum:
            loss = self._micro_step(self._next_batch(batches))
            if loss is None:
                continue  # a micro-batch with a non-finite loss: replaced by the next one
            done += 1
            sums["loss/ce"] = sums["loss/ce"] + loss / accum if sums else loss / accum
        figures = read_figures(sums) if read else {}
        elapsed = time.perf_counter() - t0
        sequences = self.world * accum * self.cfg.data.batch_size
        self.state.finish_step(sequences, elapsed)
        figures.update({"perf/step_time_s": elapsed,
                        "perf/tokens_per_s": sequences * self.layout.length / elapsed,
                        "lr": self.gen.get_lr()[0]})
        return figures

    def _micro_step(self, batch):
        """This micro-batch's loss (on the device), or None when it was not finite."""
        codes = batch.codes.to(self.device)
        guard, step, skipped = self.state.guard, self.state.step, self.gen.skipped_steps
        try:
            loss = generator_micro_step(self.gen, codes, self._condition(batch), self._dropped(codes.shape[0]))
        except NonFiniteLoss as bad:
            guard.bad_loss(bad.term, step + 1, self.state.checkpoint_step)
            return None
        if self.gen.skipped_steps > skipped:  # DeepSpeed's overflow skip
            guard.bad_gradient(step + 1, self.state.checkpoint_step)
        else:
            guard.good()
        return loss

    # ---- evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, val_loader) -> dict:
        """The held-out cross-entropy (mean over ranks), for a conditional generator the condition's
        gain (the cross-entropy with the null condition less that with each sample's own: about 0
        for a generator that ignores its condition), and, on rank 0, a grid of samples."""
        model, batches, first = self.gen.module, iter(val_loader), None
        model.eval()
        total = torch.zeros(3, device=self.device)
        for _ in range(self.cfg.data.val_batches):
            batch = next(batches)
            first = first or batch
            loss, null = own_and_null_losses(model, batch.codes.to(self.device), self._condition(batch))
            total += torch.stack([loss.float(), null.float(), torch.ones((), device=self.device)])
        model.train()
        if dist.is_initialized():
            dist.all_reduce(total)
        self._sample_grid(first)
        figures = {"val/loss": float(total[0] / total[2])}
        if model.guided:
            figures["val/condition_gain"] = float((total[1] - total[0]) / total[2])
        return figures

    def _sample_grid(self, batch) -> None:
        """Samples for the first held-out conditions beside the codes of their own images, both
        decoded by the code set's tokenizer (a collective under ZeRO-3: every rank gathers)."""
        import deepspeed

        model = self.gen.module
        gather = (deepspeed.zero.GatheredParameters(list(model.parameters()))
                  if self.gen.zero_optimization_stage() == 3 else contextlib.nullcontext())
        with gather:
            if self.rank != 0:
                return
            s = self.cfg.sampling
            n = min(s.samples, batch.codes.shape[0])
            cond = self._condition(batch)
            cond = ({k: v[:n] for k, v in cond.items()} if isinstance(cond, dict)
                    else cond[:n] if cond is not None else None)
            generator = torch.Generator(device=self.device).manual_seed(self.cfg.seed)
            codes = sample_codes(model, cond, n, SamplingConfig(s.temperature, s.top_k, s.top_p, s.cfg_scale),
                                 generator=generator)
            self._log_samples(batch.codes[:n], codes.cpu())

    def _log_samples(self, real: torch.Tensor, sampled: torch.Tensor) -> None:
        from vqct.eval.grid import reconstruction_grid
        from vqct.eval.reconstruction import to_unit
        from vqct.tokenizer.pretrained import from_pretrained

        if self.tokenizer is None:  # the code set's or, on an object store, the run's copy
            directory = local_copy(self.spec.code_set["tokenizer_dir"], mirror=f"rank{self.rank}")
            self.tokenizer = from_pretrained(directory)[0]
        h, w = self.layout.height, self.layout.width

        def decode(codes):
            indices = codes.reshape(codes.shape[0], h, w, -1)
            return to_unit(self.tokenizer.detokenize(indices[..., 0] if indices.shape[-1] == 1 else indices))

        grid = reconstruction_grid(decode(real), decode(sampled), labels=("its image's codes", "sampled"))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"samples_step{self.state.step:07d}.png"
            grid.save(path)
            self.logger.log_artifact(path, "samples")

    def summary(self, metrics: dict) -> GeneratorSummary:
        seconds = self.state.train_seconds
        return GeneratorSummary(steps=self.state.step, loss=metrics.get("loss/ce"), val_loss=metrics.get("val/loss"),
                                condition_gain=metrics.get("val/condition_gain"),
                                tokens_per_s=(self.state.images_seen * self.layout.length / seconds
                                              if seconds else None),
                                tokenizer=self.spec.code_set["digest"])


def generator_loop_per_worker(loop_config: dict) -> None:
    """Ray Train's entry point for generator recipes; LOOP_CONFIG is {"spec": WorkerSpec}."""
    import os

    stdout_to_stderr()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    GeneratorWorker(loop_config["spec"], *ray_rank_and_world()).run()
