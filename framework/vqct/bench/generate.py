"""`vqct bench generate`: the stage-2 training step against a plain PyTorch loop over the same
model and batch, and sampling with the key-value cache against recomputing, in one run.

One process, world size 1 (the step itself, not Ray). The batch is synthetic codes of the
layout asked for, with random caption features of the text model's width: the text model's
own cost is outside both loops (the worker pays it once per batch, the plain loop would too).
"""

from __future__ import annotations

import os
import sys

import torch

from vqct.bench.measure import device_name, time_interleaved
from vqct.bench.train_step import engine_settings, init_single_process
from vqct.config.generator import CaptionConditionConfig, GeneratorConfig, SegmentationConditionConfig
from vqct.errors import UserError
from vqct.stage2.build import build_generator
from vqct.stage2.generator import CodeLayout
from vqct.stage2.sampling import SamplingConfig, sample_codes
from vqct.train.schedule import warmup_cosine

TEXT_DIM = 384  # all-MiniLM-L6-v2's token width, the caption recipes' text model


def _layout(codes: int, grid: int, adj_noun: str | None) -> CodeLayout:
    if adj_noun:
        try:
            adj, noun, topk = (int(x) for x in adj_noun.split(","))
        except ValueError:
            raise UserError(f"--adj-noun {adj_noun}: give ADJECTIVES,NOUNS,TOPK, e.g. 512,512,2") from None
        return CodeLayout((("adj", adj, topk), ("noun", noun, 1)), grid, grid)
    return CodeLayout((("codes", codes, 1),), grid, grid)


def _batch(cfg: GeneratorConfig, layout: CodeLayout, batch: int, device: torch.device):
    g = torch.Generator().manual_seed(cfg.seed)
    codes = torch.cat([torch.randint(v, (batch, layout.length, 1), generator=g) for v in layout.column_vocab()],
                      dim=-1).to(device)
    cond = None
    if isinstance(cfg.condition, CaptionConditionConfig):
        t = cfg.condition.tokens
        cond = {"features": torch.randn(batch, t, TEXT_DIM, generator=g).to(device),
                "mask": torch.ones(batch, t, dtype=torch.long, device=device)}
    elif isinstance(cfg.condition, SegmentationConditionConfig):
        cond = torch.randint(cfg.condition.classes, (batch, layout.height, layout.width), generator=g).to(device)
    return codes, cond


def _plain_step(model, cfg: GeneratorConfig, codes, cond):
    """The loop a user writes by hand: AdamW over the same groups, clipping, the same schedule."""
    o = cfg.optim
    opt = torch.optim.AdamW(model.decay_groups(o.weight_decay), lr=o.lr, betas=tuple(o.betas))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, o.warmup_steps, cfg.trainer.max_steps, o.min_lr_ratio))

    def step():
        _, loss = model(codes, cond, None)
        loss.backward()
        if o.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        return loss.detach()
    return step


def bench_generate(recipe: str, overrides: list[str], codes: int, grid: int, adj_noun: str | None, steps: int,
                   warmup: int, samples: int) -> dict:
    from vqct.config import load_recipe
    from vqct.train.engines import build_generator_engine
    from vqct.train.generator_step import generator_micro_step

    cfg = load_recipe(recipe, overrides)
    if not isinstance(cfg, GeneratorConfig):
        raise UserError(f"{recipe} is a tokenizer recipe: bench generate takes a generator recipe "
                        "(family: generator), e.g. generator_shapes")
    layout = _layout(codes, grid, adj_noun)
    use_gpu = cfg.trainer.use_gpu and torch.cuda.is_available()
    device = torch.device("cuda" if use_gpu else "cpu")
    if not use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    init_single_process(use_gpu)
    text_dim = TEXT_DIM if isinstance(cfg.condition, CaptionConditionConfig) else 0
    torch.manual_seed(cfg.seed)
    engine = build_generator_engine(build_generator(cfg, layout, text_dim), engine_settings(cfg.trainer), cfg.optim,
                                    cfg.data.batch_size)
    torch.manual_seed(cfg.seed)
    plain_model = build_generator(cfg, layout, text_dim).to(device)
    batch_codes, cond = _batch(cfg, layout, cfg.data.batch_size, device)
    calls = {"vqct": lambda: generator_micro_step(engine, batch_codes, cond, None),
             "plain": _plain_step(plain_model, cfg, batch_codes, cond)}
    first = {name: round(float(fn()), 6) for name, fn in calls.items()}  # same weights, same batch: same loss
    print(f"bench generate: training, {steps} steps each ...", file=sys.stderr)
    seconds = time_interleaved(calls, steps, warmup, device)
    tokens = cfg.data.batch_size * layout.length

    model = engine.module
    sample_cond = _batch(cfg, layout, samples, device)[1]
    guided = SamplingConfig(top_k=64, cfg_scale=2.0 if model.guided else None)
    outs = {}

    def sampler(use_cache: bool):
        def run():
            cfg_s = SamplingConfig(guided.temperature, guided.top_k, guided.top_p, guided.cfg_scale, use_cache)
            outs[use_cache] = sample_codes(model, sample_cond, samples, cfg_s,
                                           generator=torch.Generator(device=device).manual_seed(0))
        return run
    print(f"bench generate: sampling {samples} x {layout.length} positions ...", file=sys.stderr)
    sample_s = time_interleaved({"cache": sampler(True), "no_cache": sampler(False)}, 3, 1, device)
    import torch.distributed as dist

    dist.destroy_process_group()
    sampled = samples * layout.length
    return {
        "bench": "generate", "device": device_name(device), "recipe": cfg.recipe, "torch": torch.__version__,
        "layout": layout.as_dict(), "condition": cfg.condition.name, "batch_size": cfg.data.batch_size,
        "n_layer": cfg.generator.n_layer, "n_embd": cfg.generator.n_embd,
        "parameters": sum(p.numel() for p in plain_model.parameters()),
        "zero_stage": engine_settings(cfg.trainer).zero_stage, "steps": steps,
        "train": {"first_loss": first,
                  "vqct": {"step_ms": round(seconds["vqct"] * 1000, 2), "tokens_per_s": round(tokens / seconds["vqct"])},
                  "plain": {"step_ms": round(seconds["plain"] * 1000, 2),
                            "tokens_per_s": round(tokens / seconds["plain"])},
                  "ratio_vs_plain": round(seconds["vqct"] / seconds["plain"], 3)},
        "sample": {"samples": samples, "cfg_scale": guided.cfg_scale, "top_k": guided.top_k,
                   "cache_tokens_per_s": round(sampled / sample_s["cache"]),
                   "no_cache_tokens_per_s": round(sampled / sample_s["no_cache"]),
                   "cache_speedup": round(sample_s["no_cache"] / sample_s["cache"], 2),
                   "same_codes": bool(torch.equal(outs[True], outs[False]))},
    }
