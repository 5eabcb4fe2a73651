import math

import pytest
import torch

from vqct_kernels import nearest_code, nearest_code_reference
from vqct.quantize import CodebookUsage, VectorQuantizer, perplexity


def test_nearest_code_matches_reference_across_chunk_sizes():
    g = torch.Generator().manual_seed(0)
    z, codes = torch.randn(1000, 16, generator=g), torch.randn(300, 16, generator=g)
    ref_idx, ref_dist = nearest_code_reference(z, codes)
    for memory_mb in (0.01, 1.0, 256.0):  # 0.01 MB forces chunks of a few rows
        idx, dist = nearest_code(z, codes, memory_mb=memory_mb)
        assert torch.equal(idx, ref_idx)
        torch.testing.assert_close(dist, ref_dist, rtol=1e-4, atol=1e-4)


def test_nearest_code_ties_go_to_smaller_index():
    codes = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    z = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    idx, dist = nearest_code(z, codes)
    assert idx.tolist() == [0, 0]
    assert dist.tolist() == pytest.approx([0.0, 0.5])


def test_quantizer_picks_nearest_code_and_computes_losses():
    vq = VectorQuantizer(codebook_size=3, dim=2, beta=0.25)
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [-2.0, 0.0]]))
    z = torch.tensor([[0.9, 1.2], [-1.5, 0.1]]).t().reshape(1, 2, 1, 2)  # (B, D, H, W)
    zq, loss, idx = vq(z)
    assert idx.tolist() == [[[1, 2]]]
    assert torch.allclose(zq, torch.tensor([[1.0, -2.0], [1.0, 0.0]]).reshape(1, 2, 1, 2))
    sq = ((0.9 - 1) ** 2 + (1.2 - 1) ** 2 + (-1.5 + 2) ** 2 + 0.1**2) / 4  # mean over 4 elements
    assert loss.item() == pytest.approx(sq * (1 + 0.25), rel=1e-5)


def test_straight_through_gradient_is_identity_and_codebook_gets_gradient():
    torch.manual_seed(0)
    vq = VectorQuantizer(codebook_size=8, dim=4, beta=0.25)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    zq, loss, _ = vq(z)
    weights = torch.randn_like(zq)
    (zq * weights).sum().backward(retain_graph=True)
    torch.testing.assert_close(z.grad, weights)  # d z_q / d z = I
    assert vq.codebook.grad is None  # the reconstruction path does not move codes
    loss.backward()
    assert vq.codebook.grad is not None and vq.codebook.grad.abs().sum() > 0


@pytest.mark.parametrize("legacy,encoder_grad,code_grad", [
    (True, 4.0, -1.0),  # taming's legacy form (the default): encoder 2(z - e) = 4, code 0.25 * 2(e - z) = -1
    (False, 1.0, -4.0),  # the VQ-VAE paper's form: encoder 0.25 * 2(z - e) = 1, code 2(e - z) = -4
])
def test_beta_weighs_the_term_of_the_chosen_form(legacy, encoder_grad, code_grad):
    vq = VectorQuantizer(codebook_size=1, dim=1, beta=0.25, legacy_beta=legacy)
    with torch.no_grad():
        vq.codebook.fill_(0.0)
    z = torch.full((1, 1, 1, 1), 2.0, requires_grad=True)
    _, loss, _ = vq(z)
    loss.backward()
    assert (z.grad.item(), vq.codebook.grad.item()) == (pytest.approx(encoder_grad), pytest.approx(code_grad))


def test_the_legacy_form_is_the_default_everywhere():
    """taming, VQCT and LG-VQ train with it (docs/methods.md cites their lines)."""
    from vqct.config import load_recipe
    from vqct.config.schema import QuantizerConfig

    assert VectorQuantizer(4, 2).legacy_beta and QuantizerConfig().legacy_beta
    for recipe in ("vqgan_shapes", "vqct_shapes", "lgvq_shapes"):
        assert load_recipe(recipe).quantizer.legacy_beta, recipe
    for recipe in ("vqct_cub", "vqct_coco", "vqct_vlt_laion"):
        cfg = load_recipe(recipe, ["data.train_shards=x", "data.val_shards=y"])
        assert cfg.quantizer.legacy_beta and cfg.quantizer.beta == 0.25, recipe


def test_perplexity_hand_computed():
    assert perplexity(torch.tensor([5, 5, 5, 5])) == pytest.approx(4.0)
    assert perplexity(torch.tensor([7, 0, 0])) == pytest.approx(1.0)
    p = torch.tensor([0.5, 0.25, 0.25])
    assert perplexity(torch.tensor([2, 1, 1])) == pytest.approx(math.exp(-(p * p.log()).sum().item()))


def test_usage_counts_codes_over_sliding_window():
    usage = CodebookUsage(codebook_size=10, window=2)
    share = lambda tracker: VectorQuantizer(10, 2).usage_stats({"codes": tracker.total})["codebook_usage"]  # noqa: E731
    usage.update(torch.bincount(torch.tensor([0, 1, 1]), minlength=10))
    assert share(usage) == pytest.approx(0.2)
    usage.update(torch.bincount(torch.tensor([2, 3]), minlength=10))
    assert share(usage) == pytest.approx(0.4)
    usage.update(torch.bincount(torch.tensor([3]), minlength=10))  # step 1 leaves the window
    assert share(usage) == pytest.approx(0.2) and usage.total.tolist() == [0, 0, 1, 2] + [0] * 6
    restored = CodebookUsage(10, 2)
    restored.restore(list(usage.window))
    assert torch.equal(restored.total, usage.total)
