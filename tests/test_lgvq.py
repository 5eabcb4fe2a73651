"""LG-VQ's losses and modules as its official code has them (docs/methods.md cites each line),
against small hand-computed references, and what trains."""

import math

import pytest
import torch
import torch.nn.functional as F

from vqct.align.lgvq import (LGVQHeads, MaskedTextPredictor, VisualTokenEncoder, choose_masked, gsa_loss,
                             mask_ratio, mtp_loss, quick_gelu, ras_loss)
from vqct.config import LGVQConfig, load_recipe

CFG = LGVQConfig(layers=1, heads=1, text_heads=1, context_length=12)


def test_the_defaults_are_the_official_settings():
    cfg = LGVQConfig()
    assert (cfg.temperature, cfg.layers, cfg.heads, cfg.text_layers, cfg.text_heads, cfg.text_dropout,
            cfg.context_length, cfg.mask_padding) == (1.0, 2, 1, 2, 1, 0.1, 30, False)
    assert (cfg.gsa_weight, cfg.mtp_weight, cfg.ras_weight) == (1e-3, 1e-2, 1e-4)  # CelebA-HQ / TextCaps


def test_mask_ratio_is_the_truncated_normal_of_the_official_tokenizer():
    """N(0.5, 0.1) truncated to [0.1, 0.3]: mean 0.2629 (scipy's truncnorm,
    worked out by hand: mean = mu - sigma (phi(b) - phi(a)) / (Phi(b) - Phi(a)), a=-4, b=-2)."""
    g = torch.Generator().manual_seed(0)
    ratios = torch.tensor([mask_ratio(g) for _ in range(4000)])
    assert ratios.min() >= 0.1 and ratios.max() <= 0.3
    phi = lambda x: math.exp(-x * x / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    big_phi = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    mean = 0.5 - 0.1 * (phi(-2) - phi(-4)) / (big_phi(-2) - big_phi(-4))
    assert mean == pytest.approx(0.2629, abs=1e-4)
    assert float(ratios.mean()) == pytest.approx(mean, abs=0.002)  # sd 0.033: 4000 draws within 4 sd
    assert float((ratios >= 0.2999).float().mean()) < 0.02  # not a clamp piling up at 0.3


def test_masking_is_independent_per_token_and_never_touches_special_or_padding_tokens():
    words = torch.zeros(400, 8, dtype=torch.bool)
    words[:, 1:6] = True
    chosen = choose_masked(words, 0.25, torch.Generator().manual_seed(0))
    assert not (chosen & ~words).any()
    assert float(chosen[:, 1:6].float().mean()) == pytest.approx(0.25, abs=0.03)
    per_caption = chosen.sum(1)
    assert (per_caption == 0).any() and (per_caption >= 3).any()  # a count that varies, zero included


def test_gsa_is_image_to_text_infonce_on_cosines_with_temperature_one():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    sentence = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    c = 1 / math.sqrt(2)  # cos(image 0, sentence 1) = cos(image 1, sentence 1)
    expected = 0.5 * (-math.log(math.e / (math.e + math.exp(c))) - math.log(math.exp(c) / (1 + math.exp(c))))
    assert gsa_loss(image, sentence).item() == pytest.approx(expected, rel=1e-6)


def test_mtp_averages_label_smoothed_cross_entropy_over_masked_tokens_and_is_zero_without_any():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    targets = torch.tensor([0, 2])
    logp = F.log_softmax(logits, -1)
    expected = sum(0.9 * -logp[i, targets[i]] - 0.1 * logp[i].mean() for i in range(2)) / 2
    assert mtp_loss(logits, targets).item() == pytest.approx(expected.item(), rel=1e-6)
    assert mtp_loss(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)).item() == 0.0


def test_ras_matches_the_official_loop_over_all_entries_start_and_end_included():
    torch.manual_seed(0)
    codes, zvt, words = torch.randn(2, 5, 4), torch.randn(2, 5, 4), torch.randn(2, 3, 4)
    valid = torch.tensor([[True, True, False], [True, True, True]])
    length = 6  # captions padded to the context length, as the official tokenizer does
    total = 0.0
    for b in range(2):
        sims = [F.normalize(words[b, i], dim=0) @ F.normalize(zvt[b], dim=1).t() for i in range(3)]
        picked = [codes[b, int(s.argmax())] * s.max() for s in sims]
        for i in range(3):
            for j in range(3):
                if valid[b, i] and valid[b, j]:
                    gz = F.normalize(picked[i], dim=0) @ F.normalize(picked[j], dim=0)
                    gw = F.normalize(words[b, i], dim=0) @ F.normalize(words[b, j], dim=0)
                    total += float((gz - gw) ** 2)
    assert ras_loss(codes, zvt, words, valid, length).item() == pytest.approx(total / (2 * length * length), rel=1e-5)


def test_ras_keeps_the_sign_of_the_matched_similarity():
    """A code matched with a negative similarity enters the Gram matrix negated."""
    zvt = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    codes = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    words = torch.tensor([[[1.0, 0.0], [-1.0, -0.01]]])  # word 1 is closest to position 1, but negative
    valid = torch.ones(1, 2, dtype=torch.bool)
    # picked: code 0 (+), code 1 (-) -> gram_z off-diagonal 0; gram_w off-diagonal ~ -1.
    cos_w = float(F.normalize(words[0, 0], dim=0) @ F.normalize(words[0, 1], dim=0))
    assert ras_loss(codes, zvt, words, valid).item() == pytest.approx(2 * cos_w ** 2 / 4, rel=1e-5)


def test_the_visual_token_encoder_feeds_the_codes_straight_in_like_clip():
    torch.manual_seed(0)
    f_vt = VisualTokenEncoder(width=8, num_tokens=4, layers=2, heads=1, text_width=6)
    names = dict(f_vt.named_parameters())
    assert not any("proj_in" in n for n in names) and names["proj"].shape == (8, 6)  # no input layer, no bias
    assert "ln_pre.weight" in names and "ln_post.weight" in names
    for p in (f_vt.cls, f_vt.pos, f_vt.proj):  # N(0, 0.01)
        assert float(p.std()) == pytest.approx(0.01, rel=0.6)
    block = f_vt.blocks.layers[0]
    assert block.norm_first and block.activation is quick_gelu and block.linear1.out_features == 32
    codes = torch.randn(3, 8, 2, 2)
    out = f_vt(codes)
    # Position 1 + k reads the code at k: CLS, then the map's vectors in row-major order.
    x = torch.cat([f_vt.cls.expand(3, 1, 8), codes.flatten(2).transpose(1, 2)], 1) + f_vt.pos
    torch.testing.assert_close(out, f_vt.ln_post(f_vt.blocks(f_vt.ln_pre(x))) @ f_vt.proj)
    assert float(quick_gelu(torch.tensor(1.0))) == pytest.approx(1 / (1 + math.exp(-1.702)))


def test_the_masked_text_decoder_is_post_norm_one_head_with_a_feed_forward_as_wide_as_the_text():
    torch.manual_seed(0)
    predictor = MaskedTextPredictor(text_width=12, context_length=6, heads=1, layers=2, dropout=0.1)
    layer = predictor.layers[0]
    assert len(predictor.layers) == 2 and layer.self_attn.num_heads == 1
    assert [m.out_features for m in layer.ffn if isinstance(m, torch.nn.Linear)] == [12, 12]
    assert isinstance(layer.ffn[1], torch.nn.ReLU) and layer.ffn[2].p == 0.1
    assert all(n.eps == 1e-12 for n in layer.norms)
    assert float(predictor.mask_tokens.std()) == pytest.approx(0.01, rel=0.5)
    # No positions added: the same tokens in another order give the same outputs, reordered.
    predictor.eval()
    tokens, z_vt = torch.randn(1, 4, 12), torch.randn(1, 5, 12)
    pad, masked = torch.zeros(1, 4, dtype=torch.bool), torch.ones(1, 4, dtype=torch.bool)
    masked[0, 0] = False
    vocab, bias = torch.randn(7, 12), torch.zeros(7)
    order = torch.tensor([0, 3, 1, 2])
    predictor.mask_tokens.data[:4] = predictor.mask_tokens.data[0]  # one mask token everywhere
    a = predictor(tokens, pad, masked, z_vt, vocab, bias)
    b = predictor(tokens[:, order], pad, masked[:, order], z_vt, vocab, bias)
    torch.testing.assert_close(a[order[1:] - 1], b)


# The official masked-text decoder by hand (LG_vqgan.py:208-225, decoder.py:107-132,189-208),
# one head, plain tensor operations on the predictor's own weights.
CONTEXT, WIDTH = 30, 8


def _fixed_predictor(mask_padding: bool) -> MaskedTextPredictor:
    """Two layers, one head, dropout off; every weight a fixed small value (no random draw),
    the LayerNorms at their initial identity."""
    predictor = MaskedTextPredictor(WIDTH, CONTEXT, heads=1, layers=2, dropout=0.1, mask_padding=mask_padding)
    with torch.no_grad():
        for i, (name, p) in enumerate(predictor.named_parameters()):
            if name.startswith(("layers.0.norms", "layers.1.norms", "head.2")):
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            else:
                p.copy_(0.4 * torch.sin(1.3 * torch.arange(p.numel(), dtype=torch.float64) + i).reshape(p.shape))
    return predictor.double().eval()


def _official_layer_norm(x, norm):
    """decoder.py:144-151: biased variance, eps 1e-12."""
    mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    return norm.weight * (x - mean) / torch.sqrt(var + norm.eps) + norm.bias


def _attend(attn, queries, keys, official_mask=None, key_pad=None):
    """decoder.py:189-208,229-238 with one head: scaled dot product, masked_fill(mask == 0, -10000)."""
    (wq, wk, wv), (bq, bk, bv) = attn.in_proj_weight.chunk(3), attn.in_proj_bias.chunk(3)
    q, k, v = queries @ wq.t() + bq, keys @ wk.t() + bk, keys @ wv.t() + bv
    score = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])
    if official_mask is not None:
        score = score.masked_fill(official_mask == 0, -10000)
    if key_pad is not None:
        score = score.masked_fill(key_pad.unsqueeze(1), float("-inf"))
    return (score.softmax(-1) @ v) @ attn.out_proj.weight.t() + attn.out_proj.bias


def _reference_logits(predictor, tokens, valid, masked, z_vt, vocab, bias, official: bool):
    """OFFICIAL: captions padded with zeros to the 30-token context and the official mask, a
    (B, 1, 1) count of real tokens; else padding keys masked at the batch's length."""
    if official:
        extra = CONTEXT - tokens.shape[1]
        tokens = torch.cat([tokens, torch.zeros(tokens.shape[0], extra, tokens.shape[2], dtype=tokens.dtype)], 1)
        valid = torch.cat([valid, torch.zeros(valid.shape[0], extra, dtype=torch.bool)], 1)
        masked = torch.cat([masked, torch.zeros(masked.shape[0], extra, dtype=torch.bool)], 1)
    mask_padding = valid.to(tokens.dtype)
    slots = predictor.mask_tokens[:tokens.shape[1]]
    x = torch.where(masked.unsqueeze(-1), slots, tokens) * mask_padding.unsqueeze(-1)  # LG_vqgan.py:210-213
    official_mask = key_pad = None
    if official:
        row = mask_padding.unsqueeze(1)  # B x 1 x N
        official_mask = row @ row.permute(0, 2, 1)  # (B x 1 x N) @ (B x N x 1): LG_vqgan.py:215-217
        assert official_mask.shape == (tokens.shape[0], 1, 1)
        assert torch.equal(official_mask.flatten(), mask_padding.sum(1))  # the count: never 0
    else:
        key_pad = ~valid
    for layer in predictor.layers:
        x = _official_layer_norm(x + _attend(layer.self_attn, x, x, official_mask, key_pad), layer.norms[0])
        x = _official_layer_norm(x + _attend(layer.cross_attn, x, z_vt), layer.norms[1])
        first, _, _, second = layer.ffn
        ffn = torch.relu(x @ first.weight.t() + first.bias) @ second.weight.t() + second.bias
        x = _official_layer_norm(x + ffn, layer.norms[2])
    linear, _, norm = predictor.head
    h = F.gelu(x @ linear.weight.t() + linear.bias)
    h = (h - h.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, unbiased=False, keepdim=True) + norm.eps)
    return ((h * norm.weight + norm.bias) @ vocab.t() + bias)[masked]


def _reference_mtp(logits, targets):
    """LabelSmoothingCrossEntropy(0.1) averaged over the masked tokens (LG_vqgan.py:231-242)."""
    logp = logits.log_softmax(-1)
    per_token = 0.9 * -logp.gather(1, targets.unsqueeze(1)).squeeze(1) - 0.1 * logp.mean(-1)
    return per_token.mean()


def _padded_batch(length=6):
    """Two captions in a batch padded to its longest (6): 4 and 6 real tokens, words masked in each."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, length, WIDTH, generator=g, dtype=torch.float64)
    valid = torch.zeros(2, length, dtype=torch.bool)
    valid[0, :4] = True
    valid[1, :6] = True
    masked = torch.zeros(2, length, dtype=torch.bool)
    masked[0, [1, 2]] = True
    masked[1, [2, 4]] = True
    z_vt = torch.randn(2, 5, WIDTH, generator=g, dtype=torch.float64)
    vocab, bias = torch.randn(11, WIDTH, generator=g), torch.randn(11, generator=g) * 0.1
    targets = torch.tensor([3, 7, 1, 9])
    return tokens, valid, masked, z_vt, vocab, bias, targets


def test_the_official_decoder_attends_to_the_zeroed_padding_of_a_fixed_30_token_context():
    """Default: the caption in a 30-token context, every word attending to the zeroed padding
    (the official mask, a B x 1 x 1 count, masks nothing): logits, L_mtp and its gradient as
    the hand-computed official decoder gives them."""
    predictor = _fixed_predictor(mask_padding=False)
    assert not LGVQConfig().mask_padding and not predictor.mask_padding
    tokens, valid, masked, z_vt, vocab, bias, targets = _padded_batch()
    z_vt.requires_grad_(True)
    logits = predictor(tokens, ~valid, masked, z_vt, vocab, bias)
    (grad,) = torch.autograd.grad(mtp_loss(logits, targets), z_vt)
    expected = _reference_logits(predictor, tokens, valid, masked, z_vt, vocab.double(), bias.double(), True)
    (expected_grad,) = torch.autograd.grad(_reference_mtp(expected, targets), z_vt)
    torch.testing.assert_close(logits.double(), expected, atol=1e-6, rtol=1e-6)
    assert mtp_loss(logits, targets).item() == pytest.approx(_reference_mtp(expected, targets).item(), rel=1e-6)
    torch.testing.assert_close(grad, expected_grad, atol=1e-6, rtol=1e-5)
    # The context is fixed: a batch padded to 30 already (whatever its padding features) gives the same.
    extra = CONTEXT - tokens.shape[1]
    padded = (torch.cat([tokens, torch.randn(2, extra, WIDTH, dtype=torch.float64)], 1),
              torch.cat([~valid, torch.ones(2, extra, dtype=torch.bool)], 1),
              torch.cat([masked, torch.zeros(2, extra, dtype=torch.bool)], 1))
    torch.testing.assert_close(predictor(*padded, z_vt, vocab, bias), logits, atol=1e-6, rtol=1e-6)
    # The padding is attended to: the same captions in a 12-token context predict otherwise.
    shorter = MaskedTextPredictor(WIDTH, 12, heads=1, layers=2, dropout=0.1).double().eval()
    shorter.load_state_dict({k: v[:12] if k == "mask_tokens" else v for k, v in predictor.state_dict().items()})
    assert (shorter(tokens, ~valid, masked, z_vt, vocab, bias) - logits).abs().max() > 1e-3


def test_the_masked_form_masks_padding_keys_as_an_option():
    """mask_padding=True: padding keys masked, so the context's length and the padding's
    features do not matter; logits and L_mtp as the hand-computed masked decoder gives them."""
    predictor = _fixed_predictor(mask_padding=True)
    tokens, valid, masked, z_vt, vocab, bias, targets = _padded_batch()
    logits = predictor(tokens, ~valid, masked, z_vt, vocab, bias)
    expected = _reference_logits(predictor, tokens, valid, masked, z_vt, vocab.double(), bias.double(), False)
    torch.testing.assert_close(logits.double(), expected, atol=1e-6, rtol=1e-6)
    assert mtp_loss(logits, targets).item() == pytest.approx(_reference_mtp(expected, targets).item(), rel=1e-6)
    garbage = tokens.clone()
    garbage[~valid] = 5.0
    torch.testing.assert_close(predictor(garbage, ~valid, masked, z_vt, vocab, bias), logits, atol=1e-6, rtol=1e-6)


def test_the_two_decoder_forms_differ_on_padded_captions_and_agree_on_a_full_context():
    official, masked_form = _fixed_predictor(mask_padding=False), _fixed_predictor(mask_padding=True)
    tokens, valid, masked, z_vt, vocab, bias, targets = _padded_batch()
    a = official(tokens, ~valid, masked, z_vt, vocab, bias)
    b = masked_form(tokens, ~valid, masked, z_vt, vocab, bias)
    assert (a - b).abs().max() > 1e-3
    assert abs(mtp_loss(a, targets).item() - mtp_loss(b, targets).item()) > 1e-4
    # Captions that fill the 30-token context: nothing to pad, nothing to mask, the same logits.
    full_tokens, full_valid, full_masked, z_vt, vocab, bias, targets = _padded_batch(length=CONTEXT)
    full_valid[:] = True
    a = official(full_tokens, ~full_valid, full_masked, z_vt, vocab, bias)
    b = masked_form(full_tokens, ~full_valid, full_masked, z_vt, vocab, bias)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    expected = _reference_logits(official, full_tokens, full_valid, full_masked, z_vt, vocab.double(),
                                 bias.double(), True)
    torch.testing.assert_close(a.double(), expected, atol=1e-6, rtol=1e-6)


def test_the_lgvq_recipes_run_the_official_decoder_and_the_heads_follow_the_key():
    shards = ["data.train_shards=x", "data.val_shards=x"]
    for recipe, overrides in (("lgvq_shapes", []), ("vqct_lgvq_shapes", []), ("lgvq_cub", shards)):
        assert load_recipe(recipe, overrides).align.lgvq.mask_padding is False, recipe
    assert load_recipe("lgvq_shapes", ["align.lgvq.mask_padding=true"]).align.lgvq.mask_padding is True
    for mask_padding in (False, True):
        cfg = LGVQConfig(layers=1, heads=1, text_heads=1, context_length=12, mask_padding=mask_padding)
        heads = LGVQHeads(code_channels=8, num_tokens=4, text_width=12, sentence_width=12,
                          token_embeddings=torch.randn(50, 12), cfg=cfg)
        assert heads.predictor.mask_padding is mask_padding


def _heads(sentence_width=12):
    torch.manual_seed(0)
    return LGVQHeads(code_channels=8, num_tokens=4, text_width=12, sentence_width=sentence_width,
                     token_embeddings=torch.randn(50, 12), cfg=CFG)


def _text(batch=3, length=6):
    ids = torch.randint(3, 50, (batch, length))
    mask = torch.ones(batch, length, dtype=torch.long)
    words = torch.ones(batch, length, dtype=torch.bool)
    words[:, 0] = words[:, -1] = False  # start / end tokens
    return {"tokens": torch.randn(batch, length, 12), "mask": mask, "ids": ids,
            "sentence": torch.randn(batch, 12), "words": words}


def test_gsa_compares_the_cls_output_itself_when_the_spaces_agree():
    heads = _heads()
    assert isinstance(heads.to_sentence, torch.nn.Identity)
    assert isinstance(_heads(sentence_width=10).to_sentence, torch.nn.Linear)
    z_vt = heads.visual_tokens(torch.randn(2, 8, 2, 2))
    torch.testing.assert_close(heads.global_embedding(z_vt), z_vt[:, 0])


def test_mtp_loss_only_counts_masked_tokens():
    heads, text = _heads().eval(), _text()
    masked = torch.zeros(3, 6, dtype=torch.bool)
    masked[0, 2] = True
    codes = torch.randn(3, 8, 2, 2)
    base = heads(codes, text, masked)["mtp"]
    text["ids"][1, 3] = (text["ids"][1, 3] + 1) % 50  # an unmasked target changes: no effect
    assert heads(codes, text, masked)["mtp"].item() == pytest.approx(base.item())
    text["ids"][0, 2] = (text["ids"][0, 2] + 1) % 50  # the masked one: the loss changes
    assert heads(codes, text, masked)["mtp"].item() != pytest.approx(base.item())


def test_the_decoder_reads_the_masked_captions_features_when_given():
    heads, text = _heads().eval(), _text()
    masked = torch.zeros(3, 6, dtype=torch.bool)
    masked[:, 2] = True
    codes = torch.randn(3, 8, 2, 2)
    official = heads(codes, text, masked)
    text["masked_tokens"] = torch.randn(3, 6, 12)
    leak_free = heads(codes, text, masked)
    assert leak_free["mtp"] != official["mtp"]
    assert leak_free["gsa"] == official["gsa"] and leak_free["ras"] == official["ras"]  # these use the caption


def test_gradients_reach_the_map_and_heads_not_the_frozen_vocabulary():
    heads, text = _heads(), _text()
    codes = torch.randn(3, 8, 2, 2, requires_grad=True)
    masked = choose_masked(text["words"], 0.3, torch.Generator().manual_seed(1))
    losses = heads(codes, text, masked)
    sum(losses.values()).backward()
    assert codes.grad is not None and codes.grad.abs().sum() > 0  # into the quantizer's input and encoder
    assert "vocab_embeddings" not in dict(heads.named_parameters())  # the frozen matrix is a buffer
    assert heads.visual.proj.grad is not None and heads.vocab_bias.grad is not None
    assert heads.code_proj.linear.weight.grad.abs().sum() > 0
