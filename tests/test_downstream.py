"""Downstream models over frozen codes: they learn what the codes carry and nothing else (a
set whose answers depend on the codes is learnt; the same set with codes shuffled against the
answers stays at chance), the caption metrics agree with hand-computed and independent
references, and `vqct downstream` refuses bad input with one line."""

import io
import json
import random

import numpy as np
import pytest
import torch
import webdataset as wds

from vqct.config import load_recipe
from vqct.config.downstream import downstream_config
from vqct.downstream.caption_metrics import caption_scores
from vqct.downstream.code_sets import read_code_set
from vqct.downstream.fit import fit
from vqct.downstream.run import run_downstream
from vqct.downstream.words import Vocabulary
from vqct.errors import UserError
from vqct.records.code_manifest import FORMAT, TOKENIZER_DIR, tokenizer_identity
from vqct.stage2.code_shards import code_layout, weights_digest
from vqct.tokenizer import build_tokenizer
from vqct.tokenizer.pretrained import save_pretrained

COLOURS = ["red", "green", "blue", "yellow"]


def _npy(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def write_code_set(directory, n, seed, shuffled=False, tokenizer_seed=0):
    """A code set of a real (untrained) vqgan_shapes tokenizer whose codes say each sample's
    colour: every grid cell holds one of the colour's 16 codes. SHUFFLED: the colours of the
    questions and captions are drawn apart from the codes."""
    cfg = load_recipe("vqgan_shapes")
    torch.manual_seed(tokenizer_seed)
    model = build_tokenizer(cfg)
    save_pretrained(model, cfg, directory / TOKENIZER_DIR)
    layout = code_layout(model, cfg)
    rng = random.Random(seed)
    with wds.TarWriter(str(directory / "codes-000000.tar")) as sink:
        for i in range(n):
            colour = rng.randrange(len(COLOURS))
            said = rng.randrange(len(COLOURS)) if shuffled else colour
            codes = np.array([[[16 * colour + rng.randrange(16)] for _ in range(8)] for _ in range(8)], np.int32)
            asked = said if rng.random() < 0.5 else (said + rng.randrange(1, len(COLOURS))) % len(COLOURS)
            questions = [{"type": "attribute", "question": "what colour is the shape?", "answer": COLOURS[said]},
                         {"type": "existence", "question": f"is there a {COLOURS[asked]} shape?",
                          "answer": "yes" if asked == said else "no"}]
            sink.write({"__key__": f"s{i:05d}", "codes.npy": _npy(codes),
                        "txt": f"a {COLOURS[said]} shape\na shape that is {COLOURS[said]}".encode(),
                        "json": json.dumps({"questions": questions}).encode()})
    identity = tokenizer_identity(weights_digest(model), "test", cfg.recipe, "vq",
                                  {"groups": [list(g) for g in layout.groups], "height": 8, "width": 8}, 32)
    (directory / "manifest.json").write_text(json.dumps(
        {"format": FORMAT, "complete": True, "tokenizer": identity,
         "shards": [{"name": "codes-000000.tar", "samples": n}]}))
    return directory


@pytest.fixture(scope="module")
def code_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("downstream")
    sets = {}
    for name, n, seed, shuffled in [("train", 600, 0, False), ("test", 200, 1, False),
                                    ("shuffled_train", 600, 0, True), ("shuffled_test", 200, 1, True)]:
        (root / name).mkdir()
        sets[name] = str(write_code_set(root / name, n, seed, shuffled))
    return sets


def test_a_code_set_reads_back_codes_captions_and_questions(code_sets):
    codes = read_code_set(code_sets["test"])
    assert codes.codes.shape == (200, 8, 8, 1) and len(codes) == 200
    assert codes.captions[0][0].startswith("a ") and len(codes.captions[0]) == 2
    assert [q["type"] for q in codes.questions[0]] == ["attribute", "existence"]
    assert read_code_set(code_sets["test"], limit=7).codes.shape[0] == 7


def test_vqa_learns_what_the_codes_say_and_nothing_when_they_say_nothing(code_sets, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = downstream_config("vqa", ["steps=300", "width=64", "layers=1", "question_length=8"])
    told = run_downstream("vqa", code_sets["train"], [code_sets["test"]], cfg, uri)["scores"]
    assert told["test/accuracy_attribute"] >= 0.95 and told["test/accuracy_existence"] >= 0.9, told
    # a learned table over the indices, blind to the codebook's vectors, reads the colour too
    # (trained in bf16, the comparison's precision: it learns as fp32 does)
    table = downstream_config("vqa", ["steps=150", "width=64", "layers=1", "question_length=8",
                                       "features=indices", "precision=bf16"])
    by_index = run_downstream("vqa", code_sets["train"], [code_sets["test"]], table, uri)["scores"]
    assert by_index["test/accuracy_attribute"] >= 0.95, by_index
    # the control, shuffle_images=true: the same set with its images swapped among themselves
    swapped = downstream_config("vqa", ["steps=300", "width=64", "layers=1", "question_length=8",
                                        "shuffle_images=true"])
    blind = run_downstream("vqa", code_sets["train"], [code_sets["test"]], swapped, uri)["scores"]
    # chance: 1/4 for the colour; 1/2 for existence (answers the model cannot see are "yes" half the time)
    assert blind["test/accuracy_attribute"] <= 0.45, blind
    assert blind["test/accuracy_existence"] <= 0.65, blind
    assert told["test/questions"] == blind["test/questions"] == 400


def test_the_captioner_learns_the_colour_and_is_scored_against_every_reference(code_sets, tmp_path):
    cfg = downstream_config("caption", ["steps=150", "width=64", "layers=1", "meteor=false"])
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    told = run_downstream("caption", code_sets["train"], [code_sets["test"]], cfg, uri)
    blind = run_downstream("caption", code_sets["shuffled_train"], [code_sets["shuffled_test"]], cfg, uri)
    assert told["scores"]["test/bleu4"] >= 0.9 and told["scores"]["test/cider_d"] >= 5.0, told["scores"]
    assert blind["scores"]["shuffled_test/bleu4"] < 0.8, blind["scores"]
    assert told["scores"]["test/cider_d"] > 2 * blind["scores"]["shuffled_test/cider_d"]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(told["run_id"])
    assert run.data.tags["vqct.task"] == "caption" and run.data.metrics["test/bleu4"] == told["scores"]["test/bleu4"]
    assert len(client.get_metric_history(told["run_id"], "train/loss")) == 15
    lines = client.download_artifacts(told["run_id"], "captions/test.jsonl", str(tmp_path))
    written = [json.loads(line) for line in open(lines)]
    held_out = read_code_set(code_sets["test"])
    assert [w["key"] for w in written] == held_out.keys
    assert all(w["references"] == refs for w, refs in zip(written, held_out.captions))
    assert sum(w["generated"] in w["references"] for w in written) >= 180  # one of its two lines, word for word


def test_bf16_fits_under_autocast_and_keeps_fp32_weights():
    """precision=bf16: the forward's matrix products run in bf16, the weights and the loss
    handed to backward stay fp32, and the model still learns."""
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = (x[:, 0] > 0).long()
    model = torch.nn.Linear(8, 2)
    seen = []

    def loss_of(batch):
        logits = model(x[batch])
        seen.append(logits.dtype)
        return torch.nn.functional.cross_entropy(logits, y[batch])

    losses = fit(model, loss_of, len(y), 200, 32, 0.05, 0, "bf16", precision="bf16")
    assert set(seen) == {torch.bfloat16} and model.weight.dtype == torch.float32
    assert sum(losses[-20:]) / 20 < 0.5 * sum(losses[:20]) / 20, (losses[:3], losses[-3:])


def test_caption_metrics_match_hand_computed_and_independent_references():
    perfect = caption_scores(["a red circle left of it"], [["a red circle left of it", "a circle"]], meteor=False)
    assert perfect["bleu4"] == pytest.approx(1.0, abs=1e-6) and perfect["rouge_l"] == pytest.approx(1.0)
    # ROUGE-L by hand: LCS 3 of a 3-word caption and an 8-word reference, F with beta 1.2
    p, r, b2 = 1.0, 3 / 8, 1.2 ** 2
    short = caption_scores(["a red circle"], [["a red circle left of a blue square"]], meteor=False)
    assert short["rouge_l"] == pytest.approx((1 + b2) * p * r / (r + b2 * p), abs=1e-6)
    # BLEU-4 against torchmetrics' implementation on a corpus with one reference each
    from torchmetrics.text import BLEUScore

    hyps = ["a big red circle left of a blue square", "two shapes on a striped background today",
            "a small green star above the yellow circle"]
    refs = ["a big red circle left of the blue square", "two shapes on a dotted background",
            "a small green star above a yellow circle"]
    ours = caption_scores(hyps, [[r] for r in refs], meteor=False)["bleu4"]
    assert ours == pytest.approx(BLEUScore(n_gram=4)(hyps, [[r] for r in refs]).item(), abs=1e-4)


def test_words_round_trip_and_unknown_words_map_to_unk():
    vocab = Vocabulary.build(["a red circle", "a blue circle"])
    ids = vocab.encode("A red: circle", 6, ends=True)
    assert ids[0] == vocab.bos and vocab.decode(ids[1:]) == "a red circle"
    assert vocab.encode("a purple circle", 3)[1] == vocab.unk


def test_bad_settings_and_mixed_tokenizers_are_refused_in_one_line(code_sets, tmp_path):
    with pytest.raises(UserError, match="question_length"):
        downstream_config("caption", ["question_length=4"])
    with pytest.raises(UserError, match="features"):
        downstream_config("vqa", ["features=pixels"])
    with pytest.raises(UserError, match="precision='fp16'"):
        downstream_config("vqa", ["precision=fp16"])
    other = tmp_path / "other"
    other.mkdir()
    write_code_set(other, 10, 3, tokenizer_seed=1)
    with pytest.raises(UserError, match="codes of two tokenizers"):
        run_downstream("vqa", code_sets["train"], [str(other)], downstream_config("vqa", ["steps=1"]),
                       f"sqlite:///{tmp_path}/mlflow.db")


def test_the_command_line_takes_settings_after_options_and_refuses_bad_ones(code_sets, tmp_path):
    import subprocess
    import sys

    base = [sys.executable, "-m", "vqct", "downstream", "vqa", code_sets["train"], "--eval", code_sets["test"],
            "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]
    done = subprocess.run(base + ["steps=2", "width=32", "train_limit=50"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["settings"]["steps"] == 2 and result["train_samples"] == 50
    (tmp_path / "r.json").write_text(done.stdout)
    table = subprocess.run([sys.executable, "-m", "vqct", "downstream", "table", str(tmp_path / "r.json")],
                           capture_output=True, text=True)
    assert table.returncode == 0 and "| vqgan_shapes | 1 |" in table.stderr, table.stderr[-2000:]
    bad = subprocess.run(base + ["stesp=2"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("vqct: error: vqa: 'stesp=2'")


def test_the_table_gives_mean_and_spread_per_tokenizer_and_task():
    from vqct.downstream.table import summarise_downstream

    def result(recipe, seed, accuracy):
        return {"task": "vqa", "tokenizer": {"recipe": recipe, "digest": "d"}, "settings": {"seed": seed},
                "scores": {"test/accuracy": accuracy}}

    rows = summarise_downstream([result("a", 0, 0.5), result("a", 1, 0.7), result("b", 0, 0.4)])["vqa"]
    assert [r["tokenizer"] for r in rows] == ["a", "b"] and rows[0]["seeds"] == [0, 1]
    assert rows[0]["test/accuracy"]["mean"] == pytest.approx(0.6)
    assert rows[0]["test/accuracy"]["sd"] == pytest.approx(0.1414213, abs=1e-6)
    assert rows[1]["test/accuracy"]["sd"] is None
    # a real set's held-out split has its own name: the first one fills the "test" columns
    coco = {"task": "t2i", "tokenizer": {"recipe": "c", "digest": "d"}, "settings": {"seed": 0},
            "scores": {"val/fid_inception": 12.5, "val/pictures": 8, "val/real_pictures": 8}}
    scenes = {"task": "t2i", "tokenizer": {"recipe": "c", "digest": "d"}, "settings": {"seed": 0},
              "scores": {"test_compositional/objects_found": 0.25, "test/objects_found": 0.5}}
    coco_row, scenes_row = summarise_downstream([coco, scenes])["t2i"]
    assert coco_row["tokenizer"] == "c (on val)" and scenes_row["tokenizer"] == "c"  # never averaged together
    assert coco_row["test/fid_inception"]["mean"] == 12.5 and "test/objects_found" not in coco_row
    # a result with a test set reads only it, not the set that happens to come first
    assert scenes_row["test/objects_found"]["mean"] == 0.5 and "test/fid_inception" not in scenes_row
