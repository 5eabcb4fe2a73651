"""VQCT's transfer quantizer against dense and brute-force references."""

import pytest
import torch

from vqct.quantize import TransferQuantizer


def _graph():
    # 3 adjectives, 2 nouns; edges a0-n0 (weight 3), a1-n0 (1), a2-n1 (2), symmetric.
    pairs = [(0, 3, 3.0), (1, 3, 1.0), (2, 4, 2.0)]
    index = torch.tensor([[a, n] for a, n, _ in pairs] + [[n, a] for a, n, _ in pairs]).t()
    weight = torch.tensor([w for *_, w in pairs] * 2)
    return index, weight


def _quantizer(code_dim=4, topk=2):
    torch.manual_seed(0)
    index, weight = _graph()
    return TransferQuantizer(torch.randn(3, 6), torch.randn(2, 6), index, weight, code_dim=code_dim,
                             hidden=5, dropout=0.0, topk=topk, beta=0.25)


def test_quantization_is_adjective_topk_mean_plus_nearest_noun():
    vq = _quantizer().eval()
    z = torch.randn(2, 8, 3, 3)
    zq, loss, idx = vq(z)
    codes = vq.codebook().detach()
    adj, noun = codes[:3], codes[3:]
    flat = z.permute(0, 2, 3, 1).reshape(-1, 8)
    za, zn = flat[:, :4], flat[:, 4:]
    adj_ref = torch.cdist(za, adj).pow(2).topk(2, dim=1, largest=False).indices
    noun_ref = torch.cdist(zn, noun).pow(2).argmin(1)
    assert torch.equal(idx.reshape(-1, 3)[:, :2], adj_ref)
    assert torch.equal(idx.reshape(-1, 3)[:, 2], noun_ref)
    expected = torch.cat([adj[adj_ref].mean(1), noun[noun_ref]], dim=1)
    torch.testing.assert_close(zq.permute(0, 2, 3, 1).reshape(-1, 8), expected)
    qa, qn = expected[:, :4], expected[:, 4:]
    ref_loss = sum(((q - x) ** 2).mean() * 1.25 for q, x in ((qa, za), (qn, zn)))
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
    torch.testing.assert_close(vq.lookup(idx), zq)


def test_gradients_reach_the_gcn_not_the_word_embeddings():
    vq = _quantizer()
    z = torch.randn(2, 8, 2, 2, requires_grad=True)
    zq, loss, _ = vq(z)
    (loss + zq.sum()).backward()
    assert not vq.word_embeddings.requires_grad and vq.word_embeddings.grad is None
    assert "word_embeddings" not in dict(vq.named_parameters())
    grads = {n: p.grad for n, p in vq.named_parameters()}
    assert set(grads) == {"transfer.layer1.linear.weight", "transfer.layer1.bias",
                          "transfer.layer2.linear.weight", "transfer.layer2.bias"}
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values())
    assert z.grad is not None  # straight-through to the encoder


def test_counts_and_pairs():
    vq = _quantizer()
    idx = torch.tensor([[[[0, 1, 0], [2, 0, 1]]]])  # (1, 1, 2, 3): adjectives (0,1) & (2,0), nouns 0, 1
    counts = vq.code_counts(idx)
    assert counts["adj"].tolist() == [2, 1, 1] and counts["noun"].tolist() == [1, 1]
    stats = vq.pair_stats(idx)
    assert stats["pairs_distinct"] == 2 and stats["pairs_perplexity"] == pytest.approx(2.0)
