"""The generation tasks of `vqct downstream` end to end on the real stack: scenes -> a
tokenizer's code sets (Ray tasks) -> a caption-conditioned generator directory -> t2i,
relations (each caption's relation line), completion and unconditional samples (Ray tasks)
judged by a scene parser, and semantic samples from a segmentation-conditioned one, each an
MLflow run tagged with its task, and a generator of the wrong condition refused; and captioning
and t2i on packed COCO, where no parser applies and FID is Inception FID alone. Tiny and
untrained: what is pinned is the wiring and the bookkeeping (every held-out scene sampled and
judged, completion matched to its real scene by key, each semantic sample beside its own class
map), not the quality. Training a generator on Ray Train and DeepSpeed, and the run directory ->
generator directory export, are test_generator_e2e's."""

import json
import subprocess

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import vqct_cmd
from vqct.config import load_recipe
from vqct.data.scenes.truth import raw_samples
from vqct.data.scenes.write import ScenesSettings, write_scenes
from vqct.eval.scene_relations import asked_relation
from vqct.eval.parser_train import train_parser
from vqct.records.code_manifest import read_code_manifest
from vqct.stage2.build import build_generator
from vqct.stage2.captions import text_width
from vqct.stage2.generator import CodeLayout
from vqct.stage2.pretrained import write_generator_dir
from vqct.text.encoders import TextEncoder
from vqct.tokenizer import build_tokenizer
from vqct.tokenizer.pretrained import save_pretrained

pytestmark = pytest.mark.e2e

GENERATOR = ["data.train_codes=codes/val", "data.val_codes=codes/val", "condition.tokens=8", "generator.n_layer=1",
             "generator.n_embd=32"]


def _vqct(args, cwd):
    proc = subprocess.run(vqct_cmd() + args, capture_output=True, text=True, cwd=cwd, timeout=600)
    return proc, (json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else None)


def _shards(directory):
    return sorted(str(p) for p in directory.glob("*.tar"))


def _untrained_generator(codes, directory, condition="caption"):
    if condition == "caption":
        cfg = load_recipe("generator_shapes", GENERATOR)
        width = text_width(TextEncoder(cfg.condition.text_model, cfg.condition.tokens + 2, "cpu"))
    else:  # the scenes' 11 classes
        cfg = load_recipe("generator_shapes", [o for o in GENERATOR if not o.startswith("condition.")] +
                          ["condition.name=segmentation", "~condition.tokens"])
        width = 0
    identity = read_code_manifest(codes)["tokenizer"]
    model = build_generator(cfg, CodeLayout.from_dict(identity["layout"]), width)
    code_set = {"layout": identity["layout"], "digest": identity["digest"], "tokenizer_dir": str(codes / "tokenizer")}
    return write_generator_dir(model, cfg, code_set, directory)


def test_t2i_relations_completion_and_unconditional_are_sampled_judged_and_tracked(tmp_path):
    # one split serves every role (generator, parser, held-out conditions): one Ray start less
    write_scenes(tmp_path / "scenes", ScenesSettings(train=1, val=8, test=0, test_compositional=0,
                                                     samples_per_shard=8), workers=1)
    cfg = load_recipe("vqgan_scenes")
    torch.manual_seed(0)
    save_pretrained(build_tokenizer(cfg), cfg, tmp_path / "tok")
    proc, _ = _vqct(["data", "tokenize", "tok", "scenes/val", "--out", "codes/val"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    urls = sorted(str(p) for p in (tmp_path / "scenes" / "val").glob("*.tar"))
    train_parser(urls, urls, str(tmp_path / "parser.pt"), steps=2, batch_size=4, width=8)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    torch.manual_seed(0)
    generator = str(_untrained_generator(tmp_path / "codes" / "val", tmp_path / "generator"))

    common = ["--eval", "codes/val", "--parser", "parser.pt", "--real", "scenes/val", "--top-k", "16",
              "--tracking-uri", uri]
    results = {}
    for task, extra in [("t2i", ["--cfg-scale", "2"]), ("relations", []), ("completion", ["--scenes", "scenes/val"]),
                        ("unconditional", [])]:
        proc, results[task] = _vqct(["downstream", task, generator, "--out", f"samples/{task}",
                                     *common, *extra], tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        scores = results[task]["scores"]
        assert results[task]["samples"] == 8 and scores["val/scenes"] == 8, scores
        assert scores["val/fid_parser"] >= 0 and "not Inception" in results[task]["fid_note"]
    assert 0 <= results["t2i"]["scores"]["val/objects_found"] <= 1
    # relations: each sample drawn with its condition's relation line, which the judge reads back
    relations = results["relations"]["scores"]
    lines = {s["__key__"]: s["txt"].decode().splitlines() for s in raw_samples(urls)}
    drawn = {s["__key__"]: s["txt"].decode() for s in raw_samples(_shards(tmp_path / "samples" / "relations"))}
    assert drawn == {key: text[2] for key, text in lines.items()}
    asked = sum(asked_relation(line) is not None for line in drawn.values())
    assert asked > 0 and relations["val/relations_asked"] == asked and 0 <= relations["val/relations_held"] <= 1
    completion = results["completion"]["scores"]
    assert completion["val/completion_scored"] == 8 and completion["val/completion_unmatched"] == 0
    assert json.loads((tmp_path / "samples" / "unconditional" / "manifest.json").read_text())["sampling"] == {
        "temperature": 1.0, "top_k": 16, "top_p": 1.0, "cfg_scale": None, "use_cache": True, "null_condition": True}

    proc, _ = _vqct(["downstream", "semantic", generator, "--out", "samples/semantic", *common],
                    tmp_path)
    assert proc.returncode == 2 and "conditioned on segmentation" in proc.stderr
    # semantic: each scene's own class map conditions its sample, and the judge scores it against that map
    segmenter = str(_untrained_generator(tmp_path / "codes" / "val", tmp_path / "segmenter", "segmentation"))
    proc, semantic = _vqct(["downstream", "semantic", segmenter, "--out", "samples/semantic", *common], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    scores = semantic["scores"]
    assert semantic["samples"] == 8 and scores["val/scenes"] == 8 and 0 <= scores["val/miou"] <= 1, scores
    maps = {s["__key__"]: s["seg.png"] for s in raw_samples(urls)}
    assert {s["__key__"]: s["seg.png"] for s in raw_samples(_shards(tmp_path / "samples" / "semantic"))} == maps

    runs = mlflow.MlflowClient(uri).search_runs(
        [e.experiment_id for e in mlflow.MlflowClient(uri).search_experiments()], "tags.`vqct.task` != ''")
    assert sorted(r.data.tags["vqct.task"] for r in runs) == ["completion", "relations", "semantic", "t2i",
                                                             "unconditional"]


def _coco_tree(root, pictures):
    """A COCO val tree: PICTURES random images of odd sizes, two captions each."""
    rng = np.random.default_rng(0)
    (root / "val2017").mkdir(parents=True)
    for i in range(pictures):
        Image.fromarray(rng.integers(0, 255, (48, 40 + i, 3), dtype=np.uint8)).save(root / "val2017" / f"{i:012d}.jpg")
    annotations = {"images": [{"id": i, "file_name": f"{i:012d}.jpg"} for i in range(pictures)],
                   "annotations": [{"image_id": i, "caption": f"a picture number {i} {k}"}
                                   for i in range(pictures) for k in range(2)]}
    (root / "captions_val2017.json").write_text(json.dumps(annotations))


def test_captioning_and_t2i_on_packed_coco_where_fid_is_inception_alone(tmp_path, inception_file):
    _coco_tree(tmp_path, 8)
    proc, _ = _vqct(["data", "pack", "coco", "--annotations", "captions_val2017.json", "--images", "val2017",
                     "--out", "coco", "--split", "val", "--workers", "1"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = load_recipe("vqgan_scenes")
    torch.manual_seed(0)
    save_pretrained(build_tokenizer(cfg), cfg, tmp_path / "tok")
    proc, _ = _vqct(["data", "tokenize", "tok", "coco/val", "--out", "codes/coco"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # captioning reads the packed captions as references and scores every held-out image
    proc, captioned = _vqct(["downstream", "caption", "codes/coco", "--eval", "codes/coco", "steps=2", "width=32",
                             "layers=1", "meteor=false", "--tracking-uri", uri], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert captioned["scores"]["coco/images"] == 8, captioned
    assert all(0 <= captioned["scores"][f"coco/{k}"] for k in ("bleu4", "rouge_l", "cider_d")), captioned
    generator = str(_untrained_generator(tmp_path / "codes" / "coco", tmp_path / "generator"))
    common = ["--eval", "codes/coco", "--real", "coco/val", "--top-k", "16", "--tracking-uri", uri]

    # refused in one line, before anything is sampled: no weights file, or a task that needs the parser
    for task, weights, said in [("t2i", "none.pth", "give --inception-weights FILE"),
                                ("completion", str(inception_file), "give --parser FILE")]:
        proc, _ = _vqct(["downstream", task, generator, "--out", f"samples/{task}", "--inception-weights", weights,
                         *common], tmp_path)
        assert proc.returncode == 2 and said in proc.stderr.strip().splitlines()[-1], proc.stderr[-2000:]
        assert not (tmp_path / "samples" / task).exists()

    proc, result = _vqct(["downstream", "t2i", generator, "--out", "samples/t2i", "--inception-weights",
                          str(inception_file), *common], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    scores = result["scores"]
    assert set(scores) == {"coco/fid_inception", "coco/pictures", "coco/real_pictures", "coco/skipped_pictures",
                           "coco/skipped_real_pictures"}, scores
    assert scores["coco/pictures"] == scores["coco/real_pictures"] == 8 and scores["coco/fid_inception"] > 0
    assert scores["coco/skipped_pictures"] == scores["coco/skipped_real_pictures"] == 0
    # each picture drawn from its own image's first caption
    drawn = {s["__key__"]: s["txt"].decode() for s in raw_samples(_shards(tmp_path / "samples" / "t2i"))}
    packed = {s["__key__"]: s["txt"].decode().splitlines()[0] for s in raw_samples(_shards(tmp_path / "coco" / "val"))}
    assert drawn == packed and len(drawn) == 8
    run = mlflow.MlflowClient(uri).get_run(result["run_id"])
    assert run.data.tags["vqct.task"] == "t2i" and run.data.metrics["coco/fid_inception"] == scores["coco/fid_inception"]
