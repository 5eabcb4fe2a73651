"""`vqct bench step`: throughput of the real training step (generator + discriminator,
DeepSpeed engines, GAN path on) in one process, for several precisions in the same run,
with each one's ratio against the first.

One process, world size 1: this measures the step itself, not Ray or communication.
"""

from __future__ import annotations

import dataclasses
import os
import random
import socket
import sys

import torch

from vqct.bench.measure import device_name, peak_flops, time_interleaved
from vqct.host_memory import keep_freed_memory
from vqct.config.schema import Config, TrainerConfig, VQCTConfig


def scene_batch(batch: int, size: int, seed: int) -> torch.Tensor:
    """Real shapes scenes, not noise: the quantizer and GAN see realistic statistics."""
    import numpy as np

    from vqct.data.shapes import make_scene

    rng = random.Random(seed)
    arrays = [np.asarray(make_scene(rng, size)[0], dtype=np.float32) for _ in range(batch)]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def init_single_process(use_gpu: bool) -> None:
    import deepspeed

    # A world of its own on a free loopback port: a MASTER_PORT inherited from a parent that
    # holds a process group of its own (a test, a training job) is taken already.
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_loopback_port()), RANK="0", LOCAL_RANK="0",
                      WORLD_SIZE="1")
    deepspeed.init_distributed(dist_backend="nccl" if use_gpu else "gloo")


def build_models(cfg: Config, priors: dict | None):
    """The tokenizer and discriminator, initialised from the config's seed (the same weights
    every time it is called)."""
    from vqct.models.discriminator import PatchDiscriminator
    from vqct.tokenizer import build_tokenizer

    torch.manual_seed(cfg.seed)
    return (build_tokenizer(cfg, priors),
            PatchDiscriminator(cfg.model.in_channels, cfg.loss.disc_channels, cfg.loss.disc_layers))


def engine_settings(trainer: TrainerConfig) -> TrainerConfig:
    """The trainer section with the ZeRO stage a one-worker run uses (train/engines.py)."""
    from vqct.train.engines import zero_stage_for

    return dataclasses.replace(trainer, zero_stage=zero_stage_for(trainer, world=1))


def _vqct_step(cfg: Config, images: torch.Tensor, priors: dict | None):
    """vqct's micro-step on its DeepSpeed engines: (step callable, engines, batch on the device)."""
    from vqct.train.engines import build_engines, compute_dtype, prepare_batch
    from vqct.train.step import LossWeights, train_micro_step

    gen, disc = build_engines(*build_models(cfg, priors), engine_settings(cfg.trainer), cfg.optim, cfg.data.batch_size)
    batch = prepare_batch(images.to(gen.device).to(compute_dtype(cfg.trainer)), cfg.trainer)
    weights = LossWeights.from_config(cfg.loss)
    return (lambda: train_micro_step(gen, disc, None, batch, cfg.loss.disc_start, weights)[0]), gen


def _step_flops(step, device: torch.device) -> int:
    """FLOPs of one call of STEP (forward and backward of both models), by torch's counter."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops()


def _figures(seconds: float, batch: int, flops: int, device: torch.device, precision: str) -> dict:
    out = {"step_ms": round(seconds * 1000, 2), "images_per_s": round(batch / seconds, 1),
           "achieved_tflops": float(f"{flops / seconds / 1e12:.4g}")}
    peak = peak_flops(device, precision)
    if peak:
        out["fraction_of_peak"] = float(f"{flops / seconds / peak:.4g}")
    return out


def _measure(cfg: Config, images: torch.Tensor, steps: int, warmup: int, priors: dict | None,
             plain: bool) -> dict:
    from vqct.bench.plain_step import PlainStep

    vqct_step, gen = _vqct_step(cfg, images, priors)
    device = gen.device
    batch = images.to(device)
    calls = {"vqct": vqct_step}
    plain_step = None
    if plain:
        plain_step = PlainStep(*(m.to(device) for m in build_models(cfg, priors)), cfg)
        calls["plain"] = lambda: plain_step(batch)
    # Same weights, same batch: the first call of each gives the same reconstruction loss.
    first = {name: round(float(fn()["loss/rec_l1"]), 6) for name, fn in calls.items()}
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    seconds = time_interleaved(calls, steps, warmup, device)
    peak = round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if cuda else None
    # FLOPs by torch's counter over the plain step, which does the same arithmetic (the
    # counter's autograd hooks cannot run inside DeepSpeed's engines); built after the timing
    # when it is not the baseline, so that its memory stays out of the peak.
    plain_step = plain_step or PlainStep(*(m.to(device) for m in build_models(cfg, priors)), cfg)
    flops = _step_flops(lambda: plain_step(batch), device)
    result = {"codebook_size": sum(gen.module.quantizer.groups.values()), "flops_per_step": flops,
              **_figures(seconds["vqct"], images.shape[0], flops, device, cfg.trainer.precision),
              "first_rec_l1": first, "rec_l1": round(float(vqct_step()["loss/rec_l1"]), 4)}
    if plain:
        result["plain"] = _figures(seconds["plain"], images.shape[0], flops, device, cfg.trainer.precision)
        result["ratio_vs_plain"] = round(seconds["vqct"] / seconds["plain"], 3)
    if cuda:
        result["peak_memory_gib"] = peak
    return result


def _measure_variants(cfgs: dict[str, Config], images: torch.Tensor, steps: int, warmup: int,
                      priors: dict | None) -> dict:
    """vqct's step under each config (the first is the base), interleaved call by call: each
    one's figures, its first loss (the same start shows the same arithmetic) and its time ratio
    against the base."""
    built = {name: _vqct_step(cfg, images, priors) for name, cfg in cfgs.items()}
    calls = {name: step for name, (step, _) in built.items()}
    first = {name: round(float(fn()["loss/rec_l1"]), 6) for name, fn in calls.items()}
    device = next(iter(built.values()))[1].device
    seconds = time_interleaved(calls, steps, warmup, device)
    base = next(iter(cfgs))
    codes = sum(built[base][1].module.quantizer.groups.values())
    return codes, {name: {"step_ms": round(seconds[name] * 1000, 2),
                          "images_per_s": round(images.shape[0] / seconds[name], 1),
                          "first_rec_l1": first[name], "ratio_vs_base": round(seconds[name] / seconds[base], 3)}
                   for name in cfgs}


def bench_step(recipe: str, overrides: list[str], precisions: list[str], steps: int, warmup: int,
               priors_dir: str | None = None, baseline: str = "precision", variants: list[str] | None = None,
               workers: int = 1, stages: list[int] | None = None) -> dict:
    """BASELINE: "precision" (each precision against the first), "plain" (vqct's step against
    the plain taming-form loop of plain_step.py, fp32, interleaved in the same run),
    "variants" (the recipe as given against the recipe plus each override in VARIANTS, e.g.
    trainer.channels_last=true, interleaved in the same run) or "ddp" (WORKERS processes: vqct's
    step at each ZeRO stage in STAGES against DistributedDataParallel, bench/ddp_step.py)."""
    from vqct.config import load_recipe
    from vqct.errors import UserError
    from vqct.text.priors import load_priors

    if baseline not in ("precision", "plain", "variants", "ddp"):
        raise UserError(f"--baseline {baseline}: give precision, plain, variants or ddp")
    if (baseline == "ddp") != (workers > 1):
        raise UserError("--baseline ddp goes with --workers 2 or more, and --workers with --baseline ddp")
    if baseline == "ddp":
        from vqct.bench.ddp_step import bench_step_ddp

        cfg = load_recipe(recipe, [*overrides, f"trainer.precision={precisions[0]}", "loss.perceptual_weight=0"])
        if cfg.align.enabled:
            raise UserError(f"{cfg.recipe} turns on alignment heads, which bench step does not time: add "
                            "align.lgvq.enabled=false align.vlt.enabled=false")
        return bench_step_ddp(cfg, workers, stages or [0, 1, 2, 3], steps, warmup, priors_dir)
    if (baseline == "variants") != bool(variants):
        raise UserError("--vary KEY=VALUE goes with --baseline variants, which needs at least one --vary")
    if baseline == "variants" and len(precisions) != 1:
        raise UserError("--baseline variants measures one precision: give --precisions fp32 or bf16")
    if baseline == "plain" and precisions != ["fp32"]:
        raise UserError("--baseline plain measures fp32 (the plain loop has no mixed precision): "
                        "give --precisions fp32")
    priors = load_priors(priors_dir) if priors_dir else None
    results, cfg, codebook_size = {}, None, None
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
                if cfg.trainer.keep_host_memory:  # as a CPU worker does; for both steps timed here
                    keep_freed_memory()
            init_single_process(use_gpu)
            images = scene_batch(cfg.data.batch_size, cfg.data.image_size, cfg.seed)
        print(f"bench step: {precision} ...", file=sys.stderr)
        if baseline == "variants":
            cfgs = {"base": cfg, **{v: load_recipe(recipe, [*overrides, f"trainer.precision={precision}",
                                                             "loss.perceptual_weight=0", v]) for v in variants}}
            codebook_size, results = _measure_variants(cfgs, images, steps, warmup, priors)
            break
        results[precision] = _measure(cfg, images, steps, warmup, priors, baseline == "plain")
    import torch.distributed as dist

    dist.destroy_process_group()
    if baseline != "variants":
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
        "zero_stage": engine_settings(cfg.trainer).zero_stage,  # one process: what one worker runs
        "zero_stage_configured": cfg.trainer.zero_stage,
        "keep_host_memory": cfg.trainer.keep_host_memory,
        "steps": steps,
        "baseline": baseline,
        "torch": torch.__version__,
        "results": results,
    }
