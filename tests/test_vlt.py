"""The vision-to-language translation module (our VQCT-VLT design)."""

import torch

from vqct.align.vlt import VisionToLanguage
from vqct.config import VLTConfig

CFG = VLTConfig(width=16, layers=1, heads=2, context_length=10, temperature=0.1)


def _module():
    torch.manual_seed(0)
    return VisionToLanguage(code_channels=8, num_tokens=4, text_width=12, sentence_width=6,
                            token_embeddings=torch.randn(40, 12), cfg=CFG).eval()


def _text():
    ids = torch.tensor([[1, 5, 6, 7, 2, 0], [1, 9, 2, 0, 0, 0]])
    return {"ids": ids, "mask": (ids != 0).long(), "sentence": torch.randn(2, 6)}


def test_caption_logits_are_causal():
    vlt, codes = _module(), torch.randn(2, 8, 2, 2)
    memory = vlt.encode_codes(codes)
    ids = _text()["ids"]
    before = vlt.logits(memory, ids)
    changed = ids.clone()
    changed[:, 4] = 11
    after = vlt.logits(memory, changed)
    torch.testing.assert_close(before[:, :4], after[:, :4])  # positions 0-3 never see token 4
    assert not torch.allclose(before[:, 4], after[:, 4])


def test_losses_are_finite_and_train_the_codes_not_the_vocabulary():
    vlt = _module().train()
    codes = torch.randn(2, 8, 2, 2, requires_grad=True)
    losses = vlt(codes, _text())
    assert set(losses) == {"vlt_caption", "vlt_align"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert codes.grad.abs().sum() > 0
    assert "vocab_embeddings" not in dict(vlt.named_parameters())


def test_padding_positions_do_not_count_in_the_caption_loss():
    vlt, codes = _module(), torch.randn(2, 8, 2, 2)
    text = _text()
    base = vlt(codes, text)["vlt_caption"]
    text["ids"] = text["ids"].masked_fill(text["mask"] == 0, 33)  # other ids under the padding
    assert torch.allclose(vlt(codes, text)["vlt_caption"], base)


def test_greedy_generation_starts_and_stops():
    vlt, codes = _module(), torch.randn(3, 8, 2, 2)
    ids = vlt.generate(codes, start_id=1, end_id=2, max_length=7)
    assert ids.shape[0] == 3 and 2 <= ids.shape[1] <= 7 and (ids[:, 0] == 1).all()
    for row in ids.tolist():  # once ended, it stays ended
        if 2 in row[1:]:
            first = row.index(2, 1)
            assert all(t == 2 for t in row[first:])


def _vqct_tokenizer(with_lgvq: bool):
    """A tiny VQCT tokenizer (transfer quantizer over a 5-word graph) with VLT or LG-VQ heads."""
    from vqct.align.heads import AlignHeads
    from vqct.align.lgvq import LGVQHeads
    from vqct.config import LGVQConfig, ModelConfig
    from vqct.quantize import TransferQuantizer
    from vqct.tokenizer import VQTokenizer

    torch.manual_seed(0)
    words = torch.randn(5, 6)
    quantizer = TransferQuantizer(words[:2], words[2:], torch.tensor([[0, 1], [2, 3]]), torch.ones(2),
                                  code_dim=4, hidden=8, dropout=0.0)
    model = VQTokenizer(ModelConfig(ch=8, ch_mult=[1, 2], attn_resolutions=[], z_channels=8, embed_dim=8),
                        quantizer, image_size=8)
    args = (8, 16, 12, 6, torch.randn(40, 12))
    model.align = (AlignHeads(LGVQHeads(*args, LGVQConfig(layers=1, context_length=10)), None) if with_lgvq
                   else AlignHeads(None, VisionToLanguage(*args, CFG)))
    return model


def _gcn_grads(model, loss):
    model.zero_grad()
    loss.backward(retain_graph=True)
    return [p.grad for p in model.quantizer.transfer.parameters()]


def test_each_translation_loss_reaches_the_transfer_network():
    """VQCT-VLT's point: language trains the codebook, here the GCN that outputs it."""
    model = _vqct_tokenizer(with_lgvq=False)
    text = {**_text(), "sentence": torch.randn(2, 6)}
    out = model(torch.randn(2, 3, 8, 8), text, None)
    for name in ("vlt_caption", "vlt_align"):
        grads = _gcn_grads(model, out.align_losses[name])
        assert all(g is not None and g.abs().sum() > 0 for g in grads), name


def test_lgvq_losses_leave_the_codebook_alone_as_the_official_code_does():
    model = _vqct_tokenizer(with_lgvq=True)
    ids = torch.tensor([[1, 5, 6, 7, 2, 0], [1, 9, 2, 0, 0, 0]])
    text = {"ids": ids, "mask": (ids != 0).long(), "tokens": torch.randn(2, 6, 12), "sentence": torch.randn(2, 6),
            "words": (ids > 2)}
    masked = torch.zeros(2, 6, dtype=torch.bool)
    masked[0, 2] = True
    out = model(torch.randn(2, 3, 8, 8), text, masked)
    for name in ("gsa", "mtp", "ras"):
        grads = _gcn_grads(model, out.align_losses[name])
        assert all(g is None or not g.any() for g in grads), name
        assert model.encoder.conv_in.weight.grad.abs().sum() > 0, name  # they train the encoder
