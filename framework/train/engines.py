"""Wrap the tokenizer and the discriminator in DeepSpeed engines (ZeRO 0-3, fp32/bf16)."""

from __future__ import annotations

import functools

import torch

from vqct.train.schedule import warmup_cosine


def deepspeed_config(cfg: dict) -> dict:
    t, o = cfg["trainer"], cfg["optim"]
    conf = {
        "train_micro_batch_size_per_gpu": cfg["data"]["batch_size"],
        "gradient_accumulation_steps": t["grad_accum"],
        "zero_optimization": {"stage": t["zero_stage"]},
        "bf16": {"enabled": t["precision"] == "bf16"},
        # Our optimizer is torch's Adam with the VQGAN betas, not a DeepSpeed-tested one.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if o["grad_clip"] > 0:
        conf["gradient_clipping"] = o["grad_clip"]
    return conf


def build_engines(tokenizer: torch.nn.Module, discriminator: torch.nn.Module, cfg: dict):
    """Returns (generator engine, discriminator engine)."""
    import deepspeed

    o, t = cfg["optim"], cfg["trainer"]
    conf = deepspeed_config(cfg)
    betas = tuple(o["betas"])
    gen_opt = torch.optim.Adam(tokenizer.parameters(), lr=o["lr"], betas=betas, weight_decay=o["weight_decay"])
    schedule = functools.partial(warmup_cosine, warmup_steps=o["warmup_steps"],
                                 max_steps=t["max_steps"], min_ratio=o["min_lr_ratio"])
    gen_sched = torch.optim.lr_scheduler.LambdaLR(gen_opt, schedule)
    gen, _, _, _ = deepspeed.initialize(model=tokenizer, optimizer=gen_opt, lr_scheduler=gen_sched, config=conf)
    # The discriminator trains at a constant lr, as in taming-transformers.
    disc_opt = torch.optim.Adam(discriminator.parameters(), lr=o["disc_lr"] or o["lr"], betas=betas)
    disc, _, _, _ = deepspeed.initialize(model=discriminator, optimizer=disc_opt, config=conf)
    return gen, disc


def compute_dtype(cfg: dict) -> torch.dtype:
    return torch.bfloat16 if cfg["trainer"]["precision"] == "bf16" else torch.float32
