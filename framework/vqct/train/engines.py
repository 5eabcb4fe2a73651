"""Wrap the tokenizer and the discriminator in DeepSpeed engines (ZeRO 0-3, fp32/bf16)."""

from __future__ import annotations

import functools

import torch

from vqct.config.schema import OptimConfig, TrainerConfig
from vqct.train.schedule import warmup_cosine


def deepspeed_config(trainer: TrainerConfig, optim: OptimConfig, micro_batch: int) -> dict:
    conf = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": trainer.grad_accum,
        "zero_optimization": {"stage": trainer.zero_stage},
        "bf16": {"enabled": trainer.precision == "bf16"},
        # Our optimizer is torch's Adam with the VQGAN betas, not a DeepSpeed-tested one.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
        # Always written: left out, DeepSpeed clips at norm 1.0 by default, which
        # optim.grad_clip=0 ("off", as in taming-transformers) must not mean.
        "gradient_clipping": optim.grad_clip,
    }
    return conf


def zero_stage_for(trainer: TrainerConfig, world: int, restoring_sharded: bool | None = None) -> int:
    """The ZeRO stage a run's engines use. With one data-parallel rank, ZeRO 1-3 shard nothing
    and only add copies (1.58x the plain loop's step against 1.00x at stage 0 on 2 CPU cores:
    docs/performance.md), so one worker runs stage 0 unless trainer.zero_when_alone is set.
    A resumed run keeps the kind of checkpoint it has: RESTORING_SHARDED is whether the
    checkpoint to restore was written by ZeRO 1-3 (None: nothing to restore)."""
    if restoring_sharded is not None:
        return trainer.zero_stage if restoring_sharded else 0
    return trainer.zero_stage if world > 1 or trainer.zero_when_alone else 0


def adam_options(optim: OptimConfig) -> dict:
    """torch.optim.Adam's keyword for optim.adam; auto leaves torch to choose (foreach on
    CUDA, one tensor at a time on the CPU)."""
    choices = {"auto": {}, "single": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    return choices[optim.adam]


def prepare_models(trainer: TrainerConfig, *models: torch.nn.Module) -> None:
    """The memory option that changes how the models run, never what they compute."""
    if not trainer.activation_checkpointing:
        return
    from vqct.models.vqgan import Checkpointed

    for module in (m for model in models for m in model.modules()):
        if isinstance(module, Checkpointed):
            module.checkpointing = True


def prepare_batch(images: torch.Tensor, trainer: TrainerConfig) -> torch.Tensor:
    """trainer.channels_last: the batch in NHWC, and every activation after it (a convolution's
    output follows its input's layout). The weights stay contiguous: DeepSpeed broadcasts and
    flattens them as plain byte views at initialisation, which NHWC weights refuse."""
    return images.contiguous(memory_format=torch.channels_last) if trainer.channels_last else images


def _compile(engine, trainer: TrainerConfig) -> None:
    """torch.compile of the engine's module in place (DeepSpeed's own entry point), so that
    calls through `engine.module` run compiled too."""
    import torch._dynamo

    backends = torch._dynamo.list_backends(exclude_tags=())
    if trainer.compile_backend not in backends:
        from vqct.errors import UserError

        raise UserError(f"config: trainer.compile_backend='{trainer.compile_backend}' is not a torch.compile "
                        f"backend here (have: {', '.join(backends)})")
    engine.compile(backend=trainer.compile_backend)


def build_engines(tokenizer: torch.nn.Module, discriminator: torch.nn.Module, trainer: TrainerConfig,
                  optim: OptimConfig, micro_batch: int):
    """Returns (generator engine, discriminator engine). MICRO_BATCH: images per rank and micro-step."""
    import deepspeed

    conf = deepspeed_config(trainer, optim, micro_batch)
    betas = tuple(optim.betas)
    prepare_models(trainer, tokenizer, discriminator)
    adam = adam_options(optim)
    gen_opt = torch.optim.Adam(tokenizer.parameters(), lr=optim.lr, betas=betas, weight_decay=optim.weight_decay,
                               **adam)
    schedule = functools.partial(warmup_cosine, warmup_steps=optim.warmup_steps,
                                 max_steps=trainer.max_steps, min_ratio=optim.min_lr_ratio)
    gen_sched = torch.optim.lr_scheduler.LambdaLR(gen_opt, schedule)
    gen, _, _, _ = deepspeed.initialize(model=tokenizer, optimizer=gen_opt, lr_scheduler=gen_sched, config=conf)
    # The discriminator trains at a constant lr, as in taming-transformers.
    disc_opt = torch.optim.Adam(discriminator.parameters(), lr=optim.disc_lr or optim.lr, betas=betas, **adam)
    disc, _, _, _ = deepspeed.initialize(model=discriminator, optimizer=disc_opt, config=conf)
    for engine in (gen, disc):
        _skip_allreduce_alone(engine)
        if trainer.compile:
            _compile(engine, trainer)
    return gen, disc


def _skip_allreduce_alone(engine) -> None:
    """ZeRO 0 on one data-parallel rank: turn off DeepSpeed's gradient all-reduce.

    Why: with nobody to reduce with, it still flattens every gradient into a bucket, "reduces"
    it, multiplies it by 1/1 and copies it back (docs/performance.md, "Where the difference
    went"). Averaging over one rank is the identity, so the gradients are bit for bit the same
    (tests/test_step.py pins it). ZeRO 1-3 keep it: their optimizers own the buffers."""
    if engine.zero_optimization_stage() == 0 and engine.dp_world_size == 1:
        engine.enable_backward_allreduce = False


def compute_dtype(trainer: TrainerConfig) -> torch.dtype:
    return torch.bfloat16 if trainer.precision == "bf16" else torch.float32


def build_generator_engine(model: torch.nn.Module, trainer: TrainerConfig, optim, micro_batch: int):
    """Stage 2's one engine: AdamW over minGPT's decay groups (the model's decay_groups), warmup
    and cosine. OPTIM: a GeneratorOptimConfig."""
    import deepspeed

    opt = torch.optim.AdamW(model.decay_groups(optim.weight_decay), lr=optim.lr, betas=tuple(optim.betas))
    schedule = functools.partial(warmup_cosine, warmup_steps=optim.warmup_steps,
                                 max_steps=trainer.max_steps, min_ratio=optim.min_lr_ratio)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched,
                                           config=deepspeed_config(trainer, optim, micro_batch))
    _skip_allreduce_alone(engine)
    return engine
