"""The stage-2 generator and its sampler: it learns code sequences and regenerates them, the
key-value cache changes nothing, guidance at scale 1 is the conditional model, a prefix is kept."""

import pytest
import torch

from vqct.stage2.generator import CodeGenerator, CodeLayout, own_and_null_losses
from vqct.stage2.sampling import SamplingConfig, sample_codes

VQGAN = CodeLayout((("codes", 16, 1),), 3, 3)
VQCT = CodeLayout((("adj", 12, 2), ("noun", 10, 1)), 3, 3)  # adj_topk=2: two adjectives, a noun


def _model(layout, condition="segmentation", seed=0, **kw):
    torch.manual_seed(seed)
    extra = {"seg_classes": 4} if condition == "segmentation" else {}
    if condition == "caption":
        extra = {"text_dim": 8, "caption_tokens": 5}
    model = CodeGenerator(layout, condition, n_layer=4, n_head=2, n_embd=32, **extra, **kw)
    with torch.no_grad():
        model.pos.normal_()  # zero at init (minGPT's); random here so that a wrong position shows
    return model


def _codes(layout, batch, seed):
    g = torch.Generator().manual_seed(seed)
    cols = [torch.randint(v, (batch, layout.length, 1), generator=g) for v in layout.column_vocab()]
    return torch.cat(cols, dim=-1)


def _seg(layout, batch, seed=1):
    return torch.randint(4, (batch, layout.height, layout.width), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("layout", [VQGAN, VQCT], ids=["one-index", "adj-noun"])
def test_overfits_and_regenerates_each_sequence_from_its_condition(layout):
    model = _model(layout)
    codes = _codes(layout, 4, seed=3)
    seg = torch.arange(4)[:, None, None].expand(4, layout.height, layout.width)  # one class map per sequence
    opt = torch.optim.AdamW(model.decay_groups(0.01), lr=3e-3, betas=(0.9, 0.95))
    for _ in range(150):
        _, loss = model(codes, seg)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    out = sample_codes(model, seg, 4, SamplingConfig(temperature=0))
    assert torch.equal(out, codes)
    # the condition's gain, as a generator run's validation reports it: the map names the sequence
    own, null = own_and_null_losses(model, codes, seg)
    assert own.item() == pytest.approx(loss.item(), abs=0.01) and null.item() - own.item() > 0.3
    own, null = own_and_null_losses(_model(layout), codes, seg)  # untrained: the map barely shows
    assert abs(null.item() - own.item()) < 0.01
    own, null = own_and_null_losses(_model(layout, "none"), codes, None)
    assert torch.equal(own, null)


@pytest.mark.parametrize("layout", [VQGAN, VQCT], ids=["one-index", "adj-noun"])
@pytest.mark.parametrize("condition,cfg_scale", [("none", None), ("segmentation", None), ("segmentation", 3.0),
                                                 ("caption", 2.0)])
def test_cache_gives_the_same_codes_as_recomputing(layout, condition, cfg_scale):
    model = _model(layout, condition)
    cond = _seg(layout, 3) if condition == "segmentation" else None
    if condition == "caption":
        cond = {"features": torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(2)),
                "mask": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])}
    runs = []
    for use_cache in (True, False):
        cfg = SamplingConfig(temperature=1.0, top_k=8, top_p=0.9, cfg_scale=cfg_scale, use_cache=use_cache)
        runs.append(sample_codes(model, cond, 3, cfg, generator=torch.Generator().manual_seed(7)))
    assert torch.equal(runs[0], runs[1])
    assert runs[0].shape == (3, layout.length, layout.columns)
    assert all((runs[0][..., c] < v).all() for c, v in enumerate(layout.column_vocab()))


def test_guidance_at_scale_one_is_the_conditional_model():
    model = _model(VQCT)
    seg = _seg(VQCT, 4)
    plain = sample_codes(model, seg, 4, SamplingConfig(), generator=torch.Generator().manual_seed(5))
    guided = sample_codes(model, seg, 4, SamplingConfig(cfg_scale=1.0), generator=torch.Generator().manual_seed(5))
    assert torch.equal(plain, guided)
    strong = sample_codes(model, seg, 4, SamplingConfig(cfg_scale=500.0), generator=torch.Generator().manual_seed(5))
    assert not torch.equal(plain, strong)  # the scale is applied


def test_prefix_is_kept_and_continued():
    model = _model(VQGAN)
    seg = _seg(VQGAN, 2)
    prefix = _codes(VQGAN, 2, seed=9)[:, :4]
    for use_cache in (True, False):
        out = sample_codes(model, seg, 2, SamplingConfig(use_cache=use_cache), prefix=prefix,
                           generator=torch.Generator().manual_seed(1))
        assert torch.equal(out[:, :4], prefix)


def test_dropped_condition_is_the_null_one():
    model = _model(VQGAN, "caption")
    feats = {"features": torch.randn(2, 5, 8), "mask": torch.ones(2, 5, dtype=torch.long)}
    drop = torch.tensor([True, False])
    tokens = model.condition_tokens(feats, 2, drop)
    null = model.condition.proj(model.condition.null)
    assert torch.allclose(tokens[0], null)
    assert not torch.allclose(tokens[1], null)


def test_bf16_weights_take_the_text_models_fp32_features():
    """trainer.precision=bf16 casts the generator's weights to bf16 while the caption features
    arrive in fp32 (a step failed on the dtype mismatch before); the bf16 loss is the fp32 one
    to bf16's precision."""
    model = _model(VQGAN, "caption")
    codes = _codes(VQGAN, 2, seed=4)
    cond = {"features": torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(5)),
            "mask": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])}
    drop = torch.tensor([True, False])
    _, fp32 = model(codes, cond, drop)
    _, bf16 = model.to(torch.bfloat16)(codes, cond, drop)
    assert bf16.dtype == torch.float32 and abs(bf16.item() - fp32.item()) < 0.05 * fp32.item()


def test_vqct_layout_forks_into_branches_with_own_heads():
    model = _model(VQCT)
    assert model.trunk_layers == 3 and [len(b) for b in model.branches] == [1, 1]  # n_layer/4 each (official)
    assert [h.out_features for h in model.heads] == [12, 12, 10]
    one = _model(VQGAN)
    assert one.trunk_layers == 4 and [len(b) for b in one.branches] == [0]


def test_decay_groups_split_every_parameter_once():
    model = _model(VQCT, "caption")
    decay, no_decay = model.decay_groups(0.01)
    ids = [id(p) for p in decay["params"]] + [id(p) for p in no_decay["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    assert id(model.pos) in {id(p) for p in no_decay["params"]}
    assert all(p.dim() == 2 for p in decay["params"])


def test_wrong_shapes_are_refused():
    model = _model(VQGAN)
    with pytest.raises(ValueError, match="positions"):
        model(torch.zeros(1, 5, 1, dtype=torch.long), _seg(VQGAN, 1))
    with pytest.raises(ValueError, match="cfg_scale"):
        sample_codes(_model(VQGAN, "none"), None, 1, SamplingConfig(cfg_scale=2.0))


@pytest.mark.parametrize("condition", ["caption", "segmentation"])
def test_null_condition_samples_ignore_the_condition_given(condition):
    model = _model(VQGAN, condition)
    with torch.no_grad():  # at init (std 0.02) a condition has little say in the logits: give it more
        for p in model.condition.parameters():
            p.mul_(1000)
    if condition == "caption":
        conds = [{"features": torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(s)),
                  "mask": torch.ones(3, 5, dtype=torch.long)} for s in (1, 2)]
    else:
        conds = [_seg(VQGAN, 3, seed=s) for s in (1, 2)]
    # argmax: an untrained model's logits are near uniform, and a draw would hide their differences
    null = [sample_codes(model, c, 3, SamplingConfig(temperature=0, null_condition=True)) for c in conds]
    assert torch.equal(null[0], null[1])  # what was asked for is not read
    asked = [sample_codes(model, c, 3, SamplingConfig(temperature=0)) for c in conds]
    assert not torch.equal(asked[0], asked[1])  # while the conditional samples read it
    with pytest.raises(ValueError, match="guidance"):
        sample_codes(model, conds[0], 3, SamplingConfig(null_condition=True, cfg_scale=2.0))
    with pytest.raises(ValueError, match="conditional generator"):
        sample_codes(_model(VQGAN, "none"), None, 3, SamplingConfig(null_condition=True))


def test_hidden_states_are_the_same_fed_whole_or_in_chunks_through_the_cache():
    # the three mask forms of the attention (is_causal for a whole sequence, none for one query,
    # a written-out mask for several queries into a filled cache) must agree, and no position may
    # see a later one
    model = _model(VQCT, "caption").eval()
    tokens = torch.randn(2, model.seq_len, model.n_embd, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        whole = model.hidden(tokens)
        cache, parts = model.new_cache(2), []
        for lo, hi in [(0, 3), (3, 4), (4, 7), (7, model.seq_len)]:
            parts.append(model.hidden(tokens[:, lo:hi], cache))
        later = tokens.clone()
        later[:, 5:] += 1.0
        changed = model.hidden(later)
    for g, w in enumerate(whole):
        torch.testing.assert_close(torch.cat([p[g] for p in parts], dim=1), w, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(changed[g][:, :5], w[:, :5], atol=1e-6, rtol=1e-6)
        assert not torch.allclose(changed[g][:, 5:], w[:, 5:])
