"""A generator restored from its checkpoint continues exactly where the run left it: the same
losses, bit for bit, and the same learning rate, at ZeRO 0 and ZeRO 2 (as train/generator_loop.py
saves and restores it, through train/checkpoint.py)."""

import dataclasses

import pytest
import torch

from vqct.config import load_recipe
from vqct.stage2.build import build_generator
from vqct.stage2.generator import CodeLayout
from vqct.train.checkpoint import load_checkpoint, save_checkpoint
from vqct.train.engines import build_generator_engine
from vqct.train.generator_step import generator_micro_step

LAYOUT = CodeLayout((("adj", 12, 2), ("noun", 10, 1)), 3, 3)


def _engine(cfg, seed):
    torch.manual_seed(seed)
    model = build_generator(cfg, LAYOUT)
    return build_generator_engine(model, cfg.trainer, cfg.optim, cfg.data.batch_size)


def _batches(n):
    g = torch.Generator().manual_seed(3)
    return [(torch.cat([torch.randint(v, (4, LAYOUT.length, 1), generator=g) for v in LAYOUT.column_vocab()], -1),
             torch.randint(4, (4, 3, 3), generator=g)) for _ in range(n)]


@pytest.mark.parametrize("stage", [0, 2])
def test_a_restored_generator_continues_bit_for_bit(single_process_group, tmp_path, stage):
    cfg = load_recipe("generator_shapes", ["condition.name=segmentation", "~condition.tokens", "condition.classes=4",
                                           "generator.n_layer=4", "generator.n_embd=32", "data.batch_size=4",
                                           "optim.warmup_steps=2", "trainer.max_steps=10"])
    cfg.trainer = dataclasses.replace(cfg.trainer, zero_stage=stage, zero_when_alone=True)
    batches = _batches(5)
    first = _engine(cfg, seed=0)
    for codes, seg in batches[:3]:
        generator_micro_step(first, codes, seg, None)
    save_checkpoint(tmp_path, first, None, {"step": 3}, {}, rank=0)
    went_on = [float(generator_micro_step(first, codes, seg, None)) for codes, seg in batches[3:]]

    restored = _engine(cfg, seed=1)  # other initial weights: everything must come from the checkpoint
    state, _ = load_checkpoint(tmp_path, restored, None)
    assert state["step"] == 3
    resumed = [float(generator_micro_step(restored, codes, seg, None)) for codes, seg in batches[3:]]
    assert resumed == went_on
    assert restored.get_lr() == first.get_lr()
