"""`vqct bench step --workers N --baseline ddp`: vqct's training step on N data-parallel
processes, at each ZeRO stage, against plain PyTorch DistributedDataParallel over the same
modules and batch, interleaved call by call in the same run.

N processes on this machine (gloo on loopback, one share of the cores each): this measures the
step with its gradient communication and ZeRO's partitioning, not Ray (whose workers run this
same step). Besides time, each stage's optimizer-state bytes per rank: what ZeRO 1 and 2 save.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import torch

from vqct.bench.measure import device_name, time_interleaved
from vqct.config.schema import Config, VQCTConfig

class DDPStep:
    """The plain step (bench/plain_step.py) over DDP-wrapped modules: the form a PyTorch user
    writes. The generator's loss reaches the discriminator's weights too; those gradients are
    thrown away before the discriminator's own step, so they are not all-reduced (no_sync)."""

    def __init__(self, gen: torch.nn.Module, disc: torch.nn.Module, cfg: Config):
        from torch.nn.parallel import DistributedDataParallel as DDP

        from vqct.bench.plain_step import PlainStep

        self.disc = DDP(disc)
        self.plain = PlainStep(DDP(gen), self.disc, cfg, last_layer=gen.last_layer,
                               gan_context=self.disc.no_sync)

    def __call__(self, images: torch.Tensor) -> dict:
        return self.plain(images)


def optimizer_state_bytes(optimizer) -> int:
    """Bytes of the optimizer's per-parameter state tensors (Adam's two moments) held by this
    rank; a ZeRO optimizer wraps the torch optimizer that holds its partition's state."""
    inner = getattr(optimizer, "optimizer", optimizer)
    return sum(t.numel() * t.element_size() for state in inner.state.values() for t in state.values()
               if torch.is_tensor(t) and t.dim() > 0)


def _rank_images(cfg: Config, rank: int) -> torch.Tensor:
    from vqct.bench.train_step import scene_batch

    return scene_batch(cfg.data.batch_size, cfg.data.image_size, cfg.seed + rank)  # each rank its own batch


def _worker(rank: int, world: int, port: int, cfg: Config, priors_dir: str | None, stages: list[int],
            steps: int, warmup: int, out: str) -> None:
    import dataclasses
    import warnings

    import deepspeed

    from vqct.bench.train_step import build_models
    from vqct.text.priors import load_priors
    from vqct.train.engines import build_engines
    from vqct.train.step import LossWeights, train_micro_step

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    # DeepSpeed's ZeRO calls torch's renamed collectives: one FutureWarning per call otherwise
    warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.distributed")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    deepspeed.init_distributed(dist_backend="gloo")
    priors = load_priors(priors_dir) if priors_dir else None
    images = _rank_images(cfg, rank)
    weights = LossWeights.from_config(cfg.loss)
    calls, engines = {}, {}
    for stage in stages:
        trainer = dataclasses.replace(cfg.trainer, zero_stage=stage)
        gen, disc = build_engines(*build_models(cfg, priors), trainer, cfg.optim, cfg.data.batch_size)
        engines[f"zero{stage}"] = (gen, disc)
        calls[f"zero{stage}"] = (lambda g=gen, d=disc: train_micro_step(g, d, None, images, cfg.loss.disc_start,
                                                                         weights)[0])
    ddp = DDPStep(*build_models(cfg, priors), cfg)
    calls["ddp"] = lambda: ddp(images)
    # Same weights, same batches: the first call of each gives the same reconstruction loss.
    first = {name: round(float(fn()["loss/rec_l1"]), 6) for name, fn in calls.items()}
    seconds = time_interleaved(calls, steps, warmup, torch.device("cpu"))
    state = {name: sum(optimizer_state_bytes(e.optimizer) for e in pair) for name, pair in engines.items()}
    state["ddp"] = optimizer_state_bytes(ddp.plain.opt_g) + optimizer_state_bytes(ddp.plain.opt_d)
    if rank == 0:
        Path(out).write_text(json.dumps({"seconds": seconds, "first_rec_l1": first, "state_bytes": state}))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def bench_step_ddp(cfg: Config, workers: int, stages: list[int], steps: int, warmup: int,
                   priors_dir: str | None) -> dict:
    import torch.multiprocessing as mp

    from vqct.bench.train_step import free_loopback_port
    from vqct.errors import UserError

    if isinstance(cfg.quantizer, VQCTConfig) and not priors_dir:
        raise UserError("quantizer.name=vqct: pass --priors DIR (a priors cache, from vqct priors build)")
    if cfg.trainer.precision != "fp32":
        raise UserError("--baseline ddp measures fp32 (the DDP loop has no mixed precision): give --precisions fp32")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    print(f"bench step: {workers} workers, ZeRO {','.join(map(str, stages))} and DDP ...", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "rank0.json")
        mp.spawn(_worker, args=(workers, free_loopback_port(), cfg, priors_dir, stages, steps, warmup, out),
                 nprocs=workers)
        raw = json.loads(Path(out).read_text())
    ddp_s = raw["seconds"]["ddp"]
    batch = cfg.data.batch_size * workers
    results = {}
    for name, s in raw["seconds"].items():
        results[name] = {"step_ms": round(s * 1000, 2), "images_per_s": round(batch / s, 1),
                         "first_rec_l1": raw["first_rec_l1"][name],
                         "optimizer_state_bytes_per_rank": raw["state_bytes"][name]}
        if name != "ddp":
            results[name]["ratio_vs_ddp"] = round(s / ddp_s, 3)
    base = raw["state_bytes"].get("zero0")
    for name in results:
        if base:
            results[name]["state_vs_zero0"] = round(raw["state_bytes"][name] / base, 3)
    return {"bench": "step", "baseline": "ddp", "device": device_name(torch.device("cpu")), "workers": workers,
            "recipe": cfg.recipe, "model": cfg.model.preset, "image_size": cfg.data.image_size,
            "batch_size_per_worker": cfg.data.batch_size, "steps": steps, "torch": torch.__version__,
            "results": results}
