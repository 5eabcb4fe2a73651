"""LG-VQ's losses against hand-computed references, and what trains."""

import math

import pytest
import torch
import torch.nn.functional as F

from vqct.align.lgvq import LGVQHeads, choose_masked, gsa_loss, mask_ratio, ras_loss
from vqct.config import LGVQConfig

CFG = LGVQConfig(width=16, layers=1, heads=1, text_heads=2, context_length=12, temperature=0.5)


def test_mask_ratio_is_clipped_to_lgvq_range():
    g = torch.Generator().manual_seed(0)
    ratios = [mask_ratio(g) for _ in range(200)]
    assert min(ratios) >= 0.1 and max(ratios) <= 0.3 + 1e-6
    assert sum(abs(r - 0.3) < 1e-6 for r in ratios) > 150  # N(0.5, 0.1) lies mostly above 0.3


def test_masking_never_touches_special_or_padding_tokens():
    words = torch.tensor([[False, True, True, True, False, False], [False, True, False, False, False, False]])
    for seed in range(20):
        chosen = choose_masked(words, 0.3, torch.Generator().manual_seed(seed))
        assert not (chosen & ~words).any() and chosen.any()


def test_gsa_is_image_to_text_infonce():
    cls = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    sentence = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    t = 0.5
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + math.exp(0)))
    assert gsa_loss(cls, sentence, t).item() == pytest.approx(expected, rel=1e-5)


def test_ras_matches_a_loop_reference():
    torch.manual_seed(0)
    codes, zvt, words = torch.randn(2, 5, 4), torch.randn(2, 5, 4), torch.randn(2, 3, 4)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    total, count = 0.0, 0
    for b in range(2):
        idx = [int((F.normalize(words[b, i], dim=0) @ F.normalize(zvt[b], dim=1).t()).argmax()) for i in range(3)]
        for i in range(3):
            for j in range(3):
                if mask[b, i] and mask[b, j]:
                    gz = F.normalize(codes[b, idx[i]], dim=0) @ F.normalize(codes[b, idx[j]], dim=0)
                    gw = F.normalize(words[b, i], dim=0) @ F.normalize(words[b, j], dim=0)
                    total += float((gz - gw) ** 2)
                    count += 1
    assert ras_loss(codes, zvt, words, mask).item() == pytest.approx(total / count, rel=1e-5)


def _heads():
    torch.manual_seed(0)
    return LGVQHeads(code_channels=8, num_tokens=4, text_width=12, sentence_width=10,
                     token_embeddings=torch.randn(50, 12), cfg=CFG)


def _text(batch=3, length=6):
    ids = torch.randint(3, 50, (batch, length))
    mask = torch.ones(batch, length, dtype=torch.long)
    words = torch.ones(batch, length, dtype=torch.bool)
    words[:, 0] = words[:, -1] = False  # start / end tokens
    return {"tokens": torch.randn(batch, length, 12), "mask": mask, "ids": ids,
            "sentence": torch.randn(batch, 10), "words": words}


def test_mtp_loss_only_counts_masked_tokens():
    heads, text = _heads(), _text()
    masked = torch.zeros(3, 6, dtype=torch.bool)
    masked[0, 2] = True
    codes = torch.randn(3, 8, 2, 2)
    base = heads(codes, text, masked)["mtp"]
    text["ids"][1, 3] = (text["ids"][1, 3] + 1) % 50  # an unmasked target changes: no effect
    assert heads(codes, text, masked)["mtp"].item() == pytest.approx(base.item())
    text["ids"][0, 2] = (text["ids"][0, 2] + 1) % 50  # the masked one: the loss changes
    assert heads(codes, text, masked)["mtp"].item() != pytest.approx(base.item())


def test_gradients_reach_codes_and_heads_not_the_frozen_vocabulary():
    heads, text = _heads(), _text()
    codes = torch.randn(3, 8, 2, 2, requires_grad=True)
    losses = heads(codes, text, choose_masked(text["words"], 0.3))
    sum(losses.values()).backward()
    assert codes.grad is not None and codes.grad.abs().sum() > 0  # into the quantizer and encoder
    assert "vocab_embeddings" not in dict(heads.named_parameters())  # the frozen matrix is a buffer
    assert heads.visual.proj_in.weight.grad is not None and heads.vocab_bias.grad is not None
