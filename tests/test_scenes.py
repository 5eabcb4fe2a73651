"""The scenes world: its ground truth agrees with its pictures and words, the compositional
split holds out what it says, the same seed gives the same bytes, and a run resumes."""

import json
import re

import numpy as np
import pytest
import webdataset as wds

from vqct.data.decode import encode_image
from vqct.data.scenes.render import render
from vqct.data.scenes.world import COLOURS, PATTERNS, RELATIONS, SHAPES, SIZES, SceneGraph, compositional_holdout
from vqct.data.scenes.truth import read_maps
from vqct.data.scenes.write import SPLITS, ScenesSettings, write_scenes
from vqct.files import sha256_file

SETTINGS = ScenesSettings(train=60, val=20, test=20, test_compositional=20, samples_per_shard=25, seed=3)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    out = tmp_path_factory.mktemp("scenes")
    summary = write_scenes(out, SETTINGS, workers=1)
    return out, summary


def _samples(out, split):
    urls = sorted(str(p) for p in (out / split).glob("*.tar"))
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))


def test_the_set_has_its_splits_and_counts(scenes):
    out, summary = scenes
    assert summary["samples"] == {"train": 60, "val": 20, "test": 20, "test_compositional": 20}
    assert summary["shards"]["train"] == 3 and summary["shards_kept"]["train"] == 0
    for split in SPLITS:
        manifest = json.loads((out / split / "manifest.json").read_text())
        assert manifest["complete"] and manifest["samples"] == len(_samples(out, split))
    vocabulary = json.loads((out / "manifest.json").read_text())["vocabulary"]
    assert len(vocabulary["shapes"]) >= 10 and len(vocabulary["colours"]) >= 10
    assert len(vocabulary["sizes"]) == 3 and vocabulary["patterns"] == ["solid", "striped", "dotted", "checked"]


def test_rendering_the_scene_graph_reproduces_the_segmentation_and_the_picture(scenes):
    out, _ = scenes
    for sample in _samples(out, "val") + _samples(out, "test_compositional"):
        meta = json.loads(sample["json"])
        graph = SceneGraph.from_json(meta["scene"])
        picture, classes, instances = render(graph, meta["width"])
        stored_classes, stored_instances = read_maps(sample)
        assert np.array_equal(classes, stored_classes) and np.array_equal(instances, stored_instances)
        assert encode_image(picture) == sample["jpg"]  # the same picture, to the byte
        for index, obj in enumerate(meta["scene"]["objects"]):  # each instance carries its own class
            assert set(np.unique(stored_classes[stored_instances == index + 1])) <= {1 + SHAPES.index(obj["shape"])}
        assert set(np.unique(stored_instances)) <= set(range(len(meta["scene"]["objects"]) + 1))


def _select(objects, where):
    return [o for o in objects if all(o[k] == v for k, v in where.items())]


def _answer(program, scene):
    """An answer computed from the scene graph JSON alone, without the generator's code."""
    objects = scene["objects"]
    if program["op"] == "count":
        return ["zero", "one", "two", "three", "four", "five"][len(_select(objects, program["where"]))]
    if program["op"] == "exist":
        return "yes" if _select(objects, program["where"]) else "no"
    if program["op"] == "query":
        (found,) = _select(objects, program["where"])  # a question names exactly one object
        return found[program["attribute"]]
    (subject,) = _select(objects, program["subject"])
    (obj,) = _select(objects, program["object"])
    triple = {"subject": subject["index"], "relation": program["relation"], "object": obj["index"]}
    return "yes" if triple in scene["relations"] else "no"


def test_every_answer_follows_from_the_scene_graph(scenes):
    out, _ = scenes
    kinds = set()
    for split in SPLITS:
        for sample in _samples(out, split):
            meta = json.loads(sample["json"])
            assert len(meta["questions"]) >= 5
            for qa in meta["questions"]:
                assert qa["answer"] == _answer(qa["program"], meta["scene"]), qa
                assert " " not in qa["answer"]  # one-word answers
                kinds.add(qa["type"])
    assert kinds == {"attribute", "count", "existence", "relation"}


def test_a_caption_names_only_what_is_in_the_scene(scenes):
    out, _ = scenes
    words = "|".join(sorted(PATTERNS) + sorted(SIZES))
    phrase = re.compile(rf"\b({'|'.join(COLOURS)})\s+(?:(?:{words})\s+)?({'|'.join(SHAPES)})\b")
    for sample in _samples(out, "train"):
        scene = json.loads(sample["json"])["scene"]
        pairs = {(o["colour"], o["shape"]) for o in scene["objects"]}
        lines = sample["txt"].decode().splitlines()
        assert len(lines) >= 3
        for caption in lines:
            named = phrase.findall(caption)
            assert named and set(named) <= pairs, (caption, pairs)
            assert {w for w in caption.split() if w in SHAPES} <= {s for _, s in pairs}
            assert {w for w in caption.split() if w in COLOURS} <= {c for c, _ in pairs}
        assert any(len(phrase.findall(c)) == len(pairs) for c in lines)  # one names every object


def test_the_compositional_split_holds_out_what_it_says(scenes):
    out, _ = scenes
    holdout = {tuple(p) for p in json.loads((out / "manifest.json").read_text())["vocabulary"]["compositional_holdout"]}
    assert holdout == compositional_holdout(SETTINGS.seed) and len(holdout) == 10
    assert {c for c, _ in holdout} == set(COLOURS) and {s for _, s in holdout} == set(SHAPES)
    for split in SPLITS:
        for sample in _samples(out, split):
            pairs = {(o["colour"], o["shape"]) for o in json.loads(sample["json"])["scene"]["objects"]}
            if split == "test_compositional":
                assert pairs & holdout
            else:
                assert not pairs & holdout, (split, pairs & holdout)


def test_scenes_cover_the_world(scenes):
    out, _ = scenes
    counts, relations, shown = [], set(), {"shape": set(), "colour": set(), "size": set(), "pattern": set()}
    for split in SPLITS:
        for sample in _samples(out, split):
            scene = json.loads(sample["json"])["scene"]
            counts.append(len(scene["objects"]))
            relations |= {r["relation"] for r in scene["relations"]}
            for key in shown:
                shown[key] |= {o[key] for o in scene["objects"]}
    assert min(counts) == 1 and max(counts) == 5
    assert relations == set(RELATIONS)
    assert shown == {"shape": set(SHAPES), "colour": set(COLOURS), "size": set(SIZES), "pattern": set(PATTERNS)}


def test_the_same_seed_gives_the_same_bytes_and_a_run_resumes(scenes, tmp_path):
    out, _ = scenes
    again = tmp_path / "again"
    write_scenes(again, SETTINGS, workers=2)
    for split in SPLITS:
        for shard in (out / split).glob("*.tar"):
            assert sha256_file(shard) == sha256_file(again / split / shard.name), shard.name
    lost = again / "train" / "scenes-000001.tar"
    lost.unlink()
    resumed = write_scenes(again, SETTINGS, workers=1)
    assert resumed["shards_kept"] == {"train": 2, "val": 1, "test": 1, "test_compositional": 1}
    assert sha256_file(lost) == sha256_file(out / "train" / lost.name)
    other = write_scenes(tmp_path / "other", ScenesSettings(train=25, val=0, test=0, test_compositional=0,
                                                            samples_per_shard=25, seed=4), workers=1)
    assert other["samples"]["train"] == 25
    assert sha256_file(tmp_path / "other" / "train" / "scenes-000000.tar") != \
        sha256_file(out / "train" / "scenes-000000.tar")


def test_the_loader_reads_scenes_as_it_reads_laion(scenes):
    from vqct.data.loader import ImageCaptionStream

    out, _ = scenes
    stream = ImageCaptionStream(sorted(str(p) for p in (out / "val").glob("*.tar")), image_size=64,
                                shuffle_buffer=0, epochs=1)
    samples = list(stream)
    assert len(samples) == 20 and all(tuple(s["image"].shape) == (3, 64, 64) for s in samples)
    first = _samples(out, "val")[0]
    assert samples[0]["key"] == first["__key__"] and samples[0]["caption"] in first["txt"].decode().splitlines()


def test_a_bad_image_size_is_one_line_and_exit_2(tmp_path, capsys):
    from vqct.cli.main import main

    assert main(["data", "scenes", "--out", str(tmp_path), "--image-size", "100"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["vqct: error: --image-size 100: give one of 64, 128, 256"]
