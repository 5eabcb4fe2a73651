"""The alignment metrics of `vqct eval` on cases with known answers."""

import pytest
import torch

from vqct.eval import alignment
from vqct.eval.fid import ReconstructionFID


def test_retrieval_recall_on_a_constructed_case():
    texts = torch.eye(6)  # six captions along the axes
    # Query 0 points at caption 0; query 1 is nearest caption 2, then its own caption 1;
    # query 2 is nearest captions 3, 4, 5, 0 before its own caption 2.
    images = torch.tensor([[1.0, 0, 0, 0, 0, 0],
                           [0, 0.5, 1.0, 0, 0, 0],
                           [0.4, 0, 0.1, 1.0, 0.9, 0.8]])
    targets = torch.tensor([0, 1, 2])
    recall = alignment.retrieval_recall(images, texts, targets, ks=(1, 2, 5))
    assert recall == {"r1": pytest.approx(1 / 3), "r2": pytest.approx(2 / 3), "r5": pytest.approx(1.0)}


def test_retrieval_ties_count_against_the_image():
    texts = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # two identical candidates
    recall = alignment.retrieval_recall(torch.tensor([[1.0, 0.0]]), texts, torch.tensor([1]), ks=(1, 2))
    assert recall == {"r1": 0.0, "r2": 1.0}


def test_chance_recall():
    assert alignment.chance_recall(20) == {"r1": 0.05, "r5": 0.25}
    assert alignment.chance_recall(3) == {"r1": pytest.approx(1 / 3), "r5": 1.0}


def test_single_word_masks_hide_one_word_token_at_a_time():
    words = torch.tensor([[False, True, True, False, False],  # [CLS] w w [SEP] [PAD]
                          [False, True, False, False, False]])
    sample, masks = alignment.single_word_masks(words)
    assert sample.tolist() == [0, 0, 1]
    assert masks.int().tolist() == [[0, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 1, 0, 0, 0]]


def test_masked_word_hits_equal_one_prediction_per_word():
    from vqct.align.lgvq import LGVQHeads
    from vqct.config import LGVQConfig

    torch.manual_seed(0)
    cfg = LGVQConfig(layers=1, heads=2, text_heads=2, context_length=6)
    lgvq = LGVQHeads(4, 4, 8, 8, torch.randn(11, 8), cfg).eval()
    ids = torch.tensor([[1, 5, 7, 2, 0, 0], [1, 3, 4, 9, 2, 0]])
    mask = ids != 0
    words = mask & (ids != 1) & (ids != 2)
    text = {"tokens": torch.randn(2, 6, 8), "mask": mask.long(), "ids": ids, "words": words}
    z_vt = lgvq.visual_tokens(torch.randn(2, 4, 2, 2))
    hits, total = alignment.masked_word_hits(lgvq, z_vt, alignment.single_word_probes(text))
    expected = 0
    with torch.no_grad():
        for b, t in words.nonzero().tolist():
            masked = torch.zeros(1, 6, dtype=torch.bool)
            masked[0, t] = True
            logits = lgvq.predict_masked(text["tokens"][b:b + 1], ~mask[b:b + 1], masked, z_vt[b:b + 1])
            expected += int(logits[0].argmax() == ids[b, t])
    assert total == 5 and hits == expected


def test_a_masked_word_leaves_no_trace_in_the_features_the_probe_reads():
    """MiniLM attends both ways: encoded whole, every token carries every word. The probe encodes
    each caption with its word replaced, so two captions that differ only there look the same."""
    from vqct.text.encoders import TextEncoder

    encoder = TextEncoder("all-MiniLM-L6-v2", 16)
    text = encoder.encode(["a red circle", "a blue circle"])
    assert not torch.allclose(text["tokens"][0, 3], text["tokens"][1, 3], atol=1e-3)  # 'circle' carries the colour
    words = torch.zeros_like(text["words"])
    words[:, 2] = True  # the colour, the only word probed
    probes = alignment.single_word_probes({**text, "words": words}, encoder)
    assert probes["targets"].tolist() == text["ids"][:, 2].tolist()
    torch.testing.assert_close(probes["tokens"][0], probes["tokens"][1])
    leaky = alignment.single_word_probes({**text, "words": words})
    assert not torch.allclose(leaky["tokens"][0], leaky["tokens"][1], atol=1e-3)


def test_similarity_mse_zero_for_the_same_geometry_and_known_otherwise():
    torch.manual_seed(0)
    x = torch.randn(10, 4)
    rotation, _ = torch.linalg.qr(torch.randn(4, 4))
    assert alignment.similarity_mse(x, x @ rotation + 3.0) == pytest.approx(0.0, abs=1e-12)
    # Two samples: after centring they are opposite in both spaces, cos = -1 on both sides.
    assert alignment.similarity_mse(torch.tensor([[0.0, 1.0], [2.0, 1.0]]), torch.tensor([[5.0], [1.0]])) == 0.0
    # Three codes on a line vs three words at a triangle's corners: worked by hand.
    codes = torch.tensor([[-1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])  # centred; middle one is the zero vector
    words = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    # code cosines off the diagonal: (0,2) = -1, the others 0; word cosines after centring: -0.5.
    assert alignment.similarity_mse(codes, words) == pytest.approx((2 * 0.25 + 4 * 0.25) / 6)


def test_mean_word_embedding_ignores_special_and_padding():
    tokens = torch.arange(12.0).view(1, 4, 3)
    words = torch.tensor([[False, True, True, False]])
    assert alignment.mean_word_embedding(tokens, words).tolist() == [[4.5, 5.5, 6.5]]


def test_rfid_says_where_it_looked_when_weights_are_missing(tmp_path):
    fid = ReconstructionFID(tmp_path / "missing.pth", "cpu")
    fid.update(torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8))
    assert fid.compute() == f"skipped: no Inception weights at {tmp_path / 'missing.pth'}"


def test_the_cpu_evaluator_chunks_in_nhwc_and_measures_what_whole_nchw_batches_give():
    """vqct eval's CPU path (chunks of CPU_IMAGE_CHUNK, channels-last) against the plain pass of
    the same model over the whole batch: the same PSNR, SSIM, L1, code counts and word means."""
    from vqct.config import load_recipe
    from vqct.eval.evaluate import CPU_IMAGE_CHUNK, Evaluator
    from vqct.eval.reconstruction import ReconstructionMetrics
    from vqct.text.encoders import TextEncoder
    from vqct.tokenizer import build_tokenizer

    cfg = load_recipe("vqgan_shapes", [])
    torch.manual_seed(0)
    model = build_tokenizer(cfg, None).eval()
    images = torch.rand(CPU_IMAGE_CHUNK * 2 + 3, 3, 32, 32) * 2 - 1  # two full chunks and a short one
    captions = [f"a red square number {i}" for i in range(len(images))]
    text = TextEncoder("all-MiniLM-L6-v2", 16)
    with torch.no_grad():
        zq, _, indices = model.encode(images)
        plain = ReconstructionMetrics("cpu")
        plain.update(images, model.decode(zq))
        counts = model.quantizer.code_counts(indices)
    evaluator = Evaluator(model, text, "cpu", None)
    evaluator.update(images, captions)
    assert next(model.parameters()).is_contiguous(memory_format=torch.channels_last)
    got = evaluator.reconstruction.compute()
    assert got == pytest.approx(plain.compute(), rel=1e-5)
    assert {k: v.tolist() for k, v in evaluator.got.counts.items()} == {k: v.tolist() for k, v in counts.items()}
    assert torch.allclose(evaluator.got.code_means[0], zq.mean((2, 3)), atol=1e-6)
    assert len(evaluator.got.word_means[0]) == len(images)
