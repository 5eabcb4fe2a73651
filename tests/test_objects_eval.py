"""Reconstruction judged on objects (vqct.eval.objects): object-pixel PSNR and L1 against a
hand computation, colours read from the known masks, shapes read by a parser inside each
object's visible mask, and the ground truth read back from the shards under the loader's keys."""

import math

import numpy as np
import pytest
import torch

from vqct.data.scenes.render import render
from vqct.data.scenes.truth import SceneTruth, read_scenes, read_truth
from vqct.data.scenes.world import COLOURS, SHAPES, Background, SceneGraph, SceneObject
from vqct.data.scenes.write import ScenesSettings, write_scenes
from vqct.eval.objects import ObjectMetrics, colour_of, interior, parsed_shapes

COLOUR_NAMES = list(COLOURS)


def _scene(objects) -> SceneGraph:
    return SceneGraph([SceneObject(*o) for o in objects], Background("gradient", (96, 96, 100), (70, 84, 96), 30.0, 0), [])


def _truth_and_picture(graph: SceneGraph, size: int = 64):
    picture, classes, instances = render(graph, size)
    truth = SceneTruth(classes, instances, [SHAPES.index(o.shape) for o in graph.objects],
                       [COLOUR_NAMES.index(o.colour) for o in graph.objects])
    image = torch.from_numpy(np.asarray(picture)).permute(2, 0, 1).float() / 127.5 - 1
    return truth, image


GRAPH = _scene([("circle", "green", "large", "striped", 0.3, 0.35, 0, 0.0),
                ("square", "orange", "medium", "checked", 0.65, 0.6, 1, 10.0),
                ("star", "white", "small", "dotted", 0.7, 0.25, 2, 0.0)])


class OneHotParser(torch.nn.Module):
    """A parser that reads a given class map perfectly (the judge's arithmetic, not its skill)."""

    def __init__(self, classes: torch.Tensor):
        super().__init__()
        self.classes = classes
        self.num_classes = len(SHAPES) + 1
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, images):
        return torch.nn.functional.one_hot(self.classes[: len(images)], len(SHAPES) + 1).permute(0, 3, 1, 2).float() * 10


def test_each_palette_colour_is_read_back_from_every_pattern_it_is_drawn_in():
    for colour in COLOURS:
        for pattern in ("solid", "striped", "dotted", "checked"):
            truth, image = _truth_and_picture(_scene([("hexagon", colour, "large", pattern, 0.5, 0.5, 0, 0.0)]))
            pixels = ((image.permute(1, 2, 0) + 1) * 127.5).numpy()[interior(truth.instances == 1)]
            assert COLOUR_NAMES[colour_of(pixels)] == colour, (colour, pattern)


def test_object_metrics_of_a_perfect_and_of_a_recoloured_reconstruction():
    truth, image = _truth_and_picture(GRAPH)
    metrics = ObjectMetrics({"k": truth}, OneHotParser(torch.from_numpy(truth.classes).long()[None]))
    metrics.update(["k"], image[None], image[None])
    perfect = metrics.results()
    assert perfect["object_psnr"] == float("inf") and perfect["object_l1"] == 0.0
    assert perfect["colour_kept"] == 1.0 and perfect["shape_kept"] == 1.0 and perfect["objects"] == 3

    recon = image.clone()
    circle = torch.from_numpy(truth.instances == 1)
    recon[:, circle] = torch.tensor([-1.0, -1.0, -1.0])[:, None]  # the green circle comes back black
    recon[:, ~torch.from_numpy(truth.instances > 0)] = 0.0  # the background is not counted at all
    metrics = ObjectMetrics({"k": truth}, None)
    metrics.update(["k", "no-truth"], torch.stack([image, image]), torch.stack([recon, recon]))
    got = metrics.results()
    on_object = torch.from_numpy(truth.instances > 0)[None].expand(3, -1, -1)
    diff = ((recon - image) / 2)[on_object]
    assert got["object_psnr"] == pytest.approx(10 * math.log10(1 / float((diff ** 2).mean())), rel=1e-6)
    assert got["object_l1"] == pytest.approx(float((recon - image)[on_object].abs().mean()), rel=1e-6)
    assert got["colour_kept"] == pytest.approx(2 / 3) and got["colour_judge_accuracy"] == 1.0
    assert got["shape_kept"] is None and got["object_scenes"] == 1  # no parser; the key without truth passed over


def test_the_parser_is_read_inside_each_objects_visible_mask_only():
    truth, image = _truth_and_picture(GRAPH)
    classes = torch.from_numpy(truth.classes).long()
    wrong = classes.clone()
    wrong[classes == 0] = 1 + SHAPES.index("ring")  # background called ring: no object's business
    wrong[torch.from_numpy(truth.instances == 3)] = 1 + SHAPES.index("cross")  # the star read as a cross
    instances = torch.from_numpy(truth.instances).long()[None]
    read = parsed_shapes(OneHotParser(wrong[None]), image[None], instances, [4])
    assert read == [[SHAPES.index("circle"), SHAPES.index("square"), SHAPES.index("cross"), -1]]


def test_ground_truth_is_read_back_from_the_shards_under_the_loaders_keys(tmp_path):
    from vqct.data.loader import ImageCaptionStream

    write_scenes(tmp_path, ScenesSettings(train=6, val=4, test=1, test_compositional=1, samples_per_shard=3, seed=1),
                 workers=1)
    urls = sorted(str(p) for p in (tmp_path / "val").glob("*.tar"))
    truth = read_truth(urls, 64)
    keys = [s["key"] for s in ImageCaptionStream(urls, 64, shuffle_buffer=0, epochs=1)]
    assert sorted(truth) == sorted(keys) and len(keys) == 4
    pictures, scenes = read_scenes(urls, 32)
    assert pictures.shape == (4, 32, 32, 3) and scenes[0].instances.shape == (32, 32)
    assert set(np.unique(scenes[0].instances)) <= set(range(len(scenes[0].shapes) + 1))
    import webdataset as wds

    with wds.TarWriter(str(tmp_path / "plain.tar")) as sink:  # an image-caption set without ground truth
        sink.write({"__key__": "a", "jpg": b"not read", "txt": "a red square"})
    assert read_truth([str(tmp_path / "plain.tar")], 64) == {}


def test_vqct_evals_pass_measures_objects_of_each_chunk_under_its_own_keys(tmp_path):
    """The evaluator's CPU chunks carry their keys: the object metrics of a batch longer than a
    chunk equal those of the same reconstructions measured in one go."""
    from vqct.config import load_recipe
    from vqct.eval.evaluate import CPU_IMAGE_CHUNK, Evaluator
    from vqct.text.encoders import TextEncoder
    from vqct.tokenizer import build_tokenizer

    write_scenes(tmp_path, ScenesSettings(train=1, val=CPU_IMAGE_CHUNK + 4, test=0, test_compositional=0,
                                          samples_per_shard=100, seed=2), workers=1)
    pictures, scenes = read_scenes(sorted(str(p) for p in (tmp_path / "val").glob("*.tar")), 64)
    images = (torch.from_numpy(pictures).permute(0, 3, 1, 2).float() / 127.5 - 1).contiguous()  # as the loader's
    keys = [f"s{i}" for i in range(len(images))]
    truth = {k: t for k, t in zip(keys, scenes)}
    torch.manual_seed(0)
    model = build_tokenizer(load_recipe("vqgan_scenes", []), None).eval()
    with torch.no_grad():
        recon = model.decode(model.encode(images)[0])
    whole = ObjectMetrics(truth)
    whole.update(keys, images, recon)
    evaluator = Evaluator(model, TextEncoder("all-MiniLM-L6-v2", 16), "cpu", None, ObjectMetrics(truth))
    evaluator.update(images, ["a red square"] * len(images), keys)
    got = evaluator.results()
    assert got["object_scenes"] == len(images) and got["objects"] == sum(len(s.shapes) for s in scenes)
    assert got["object_psnr"] == pytest.approx(whole.results()["object_psnr"], rel=1e-4)
    assert got["colour_kept"] == whole.results()["colour_kept"]


def test_the_parsers_own_figures_and_its_file(tmp_path):
    """measure() scores a perfect reader 1.0 everywhere; vqct parser's file loads and carries
    its held-out figures."""
    from vqct.eval.objects import load_parser
    from vqct.eval.parser_train import _tensors, measure, train_parser

    write_scenes(tmp_path, ScenesSettings(train=12, val=6, test=0, test_compositional=0, samples_per_shard=100,
                                          seed=4), workers=1)
    urls = {split: sorted(str(p) for p in (tmp_path / split).glob("*.tar")) for split in ("train", "val")}
    pictures, scenes = read_scenes(urls["val"], 64)
    images, classes, instances = _tensors(pictures, scenes)
    perfect = measure(OneHotParser(classes), images, classes, instances, scenes)
    assert perfect["pixel_accuracy"] == 1.0 and perfect["miou"] == 1.0 and perfect["object_shape_accuracy"] == 1.0
    assert perfect["objects"] == sum(len(s.shapes) for s in scenes)
    out = tmp_path / "parser.pt"
    result = train_parser(urls["train"], urls["val"], str(out), steps=2, batch_size=4, width=8)
    parser, record = load_parser(str(out), "cpu")
    assert record["held_out"] == result["held_out"] and record["train_scenes"] == 12
    assert parser(images[:2]).shape == (2, len(SHAPES) + 1, 64, 64)


def test_the_parser_refuses_shards_without_ground_truth(tmp_path):
    import webdataset as wds

    from vqct.errors import UserError
    from vqct.eval.parser_train import train_parser

    with wds.TarWriter(str(tmp_path / "plain.tar")) as sink:
        sink.write({"__key__": "a", "jpg": b"not read", "txt": "a red square"})
    with pytest.raises(UserError, match="--data holds no scene with ground truth"):
        train_parser([str(tmp_path / "plain.tar")], [str(tmp_path / "plain.tar")], str(tmp_path / "p.pt"), steps=1)
