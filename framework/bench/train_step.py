"""`vqct bench step`: throughput of the real training step (generator + discriminator,
DeepSpeed engines, GAN path on) in one process, for several precisions in the same run,
with each one's ratio against the first.

One process, world size 1: this measures the step itself, not Ray or communication.
"""

from __future__ import annotations

import os
import random
import sys
import time

import torch

from vqct.bench.measure import device_name
from vqct.config.schema import Config, VQCTConfig


def _images(batch: int, size: int, seed: int) -> torch.Tensor:
    """Real shapes scenes, not noise: the quantizer and GAN see realistic statistics."""
    import numpy as np

    from vqct.data.shapes import make_scene

    rng = random.Random(seed)
    arrays = [np.asarray(make_scene(rng, size)[0], dtype=np.float32) for _ in range(batch)]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0


def _init_single_process(use_gpu: bool) -> None:
    import deepspeed

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    deepspeed.init_distributed(dist_backend="nccl" if use_gpu else "gloo")


def _measure(cfg: Config, images: torch.Tensor, steps: int, warmup: int, priors: dict | None) -> dict:
    from vqct.models.discriminator import PatchDiscriminator
    from vqct.tokenizer import build_tokenizer
    from vqct.train.engines import build_engines, compute_dtype
    from vqct.train.step import LossWeights, train_micro_step

    torch.manual_seed(cfg.seed)
    gen, disc = build_engines(
        build_tokenizer(cfg, priors),
        PatchDiscriminator(cfg.model.in_channels, cfg.loss.disc_channels, cfg.loss.disc_layers),
        cfg.trainer, cfg.optim, cfg.data.batch_size,
    )
    device = gen.device
    batch = images.to(device).to(compute_dtype(cfg.trainer))
    weights = LossWeights.from_config(cfg.loss)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        train_micro_step(gen, disc, None, batch, cfg.loss.disc_start, weights)
    if cuda:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        metrics, _ = train_micro_step(gen, disc, None, batch, cfg.loss.disc_start, weights)
    if cuda:
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / steps
    result = {"codebook_size": sum(gen.module.quantizer.groups.values()), "step_ms": round(seconds * 1000, 2), "images_per_s": round(images.shape[0] / seconds, 1),
              "rec_l1": round(metrics["loss/rec_l1"], 4)}
    if cuda:
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    del gen, disc
    return result


def bench_step(recipe: str, overrides: list[str], precisions: list[str], steps: int, warmup: int,
               priors_dir: str | None = None) -> dict:
    from vqct.config import load_recipe
    from vqct.errors import UserError
    from vqct.text.priors import load_priors

    priors = load_priors(priors_dir) if priors_dir else None
    results, cfg = {}, None
    for precision in precisions:
        cfg = load_recipe(recipe, [*overrides, f"trainer.precision={precision}", "loss.perceptual_weight=0"])
        if isinstance(cfg.quantizer, VQCTConfig) and priors is None:
            raise UserError("quantizer.name=vqct: pass --priors DIR (a priors cache, from vqct priors build)")
        if cfg.align.enabled:
            raise UserError(f"{cfg.recipe} turns on alignment heads, which bench step does not time (it "
                            "feeds images only): add align.lgvq.enabled=false align.vlt.enabled=false, or read "
                            "perf/images_per_s of a training run")
        use_gpu = cfg.trainer.use_gpu and torch.cuda.is_available()
        if not results:
            if cfg.trainer.use_gpu and not use_gpu:
                print("warning: trainer.use_gpu=true but no CUDA device: measuring on the CPU", file=sys.stderr)
            if not use_gpu:
                os.environ.setdefault("DS_ACCELERATOR", "cpu")
            _init_single_process(use_gpu)
            images = _images(cfg.data.batch_size, cfg.data.image_size, cfg.seed)
        print(f"bench step: {precision} ...", file=sys.stderr)
        results[precision] = _measure(cfg, images, steps, warmup, priors)
    import torch.distributed as dist

    dist.destroy_process_group()
    codebook_size = [r.pop("codebook_size") for r in results.values()][0]
    base = results[precisions[0]]["images_per_s"]
    for precision in precisions:
        results[precision]["speedup_vs_" + precisions[0]] = round(results[precision]["images_per_s"] / base, 3)
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.trainer.use_gpu else "cpu")
    return {
        "bench": "step",
        "device": device_name(device),
        "recipe": cfg.recipe,
        "model": cfg.model.preset,
        "image_size": cfg.data.image_size,
        "batch_size": cfg.data.batch_size,
        "codebook_size": codebook_size,
        "zero_stage": cfg.trainer.zero_stage,
        "steps": steps,
        "torch": torch.__version__,
        "results": results,
    }
