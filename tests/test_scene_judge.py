"""The scene judge's logic, with an oracle parser that reads each picture's true class map: a
real scene judged against its own caption finds its objects, the same scene judged against
another's finds few, a recoloured object is lost by colour and kept by shape, and a perfect
parse has mIoU 1; Inception FID of plain image shards (real data) counts what it reads."""

import numpy as np
import pytest
import torch

from vqct.data.scenes.write import ScenesSettings, write_scenes
from vqct.downstream.judge import _rotated
from vqct.errors import UserError
from vqct.eval.scene_judge import asked_scenes, judge_scenes, objects_found


class OracleParser(torch.nn.Module):
    """Logits that put each pixel in the class of the map it was given for that picture."""

    def __init__(self, maps: dict[bytes, np.ndarray], num_classes: int = 11):
        super().__init__()
        self.maps, self.num_classes = maps, num_classes

    def forward(self, images):
        pictures = ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        classes = torch.stack([torch.from_numpy(self.maps[p.tobytes()].astype(np.int64)) for p in pictures])
        return torch.nn.functional.one_hot(classes, self.num_classes).permute(0, 3, 1, 2).float()


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    out = tmp_path_factory.mktemp("judge")
    write_scenes(out, ScenesSettings(train=1, val=0, test=60, test_compositional=0, samples_per_shard=60), workers=1)
    return list(asked_scenes([str(out / "test" / "scenes-000000.tar")], 64))


def test_real_scenes_are_found_and_mismatched_ones_are_not(scenes):
    parser = OracleParser({s.picture.tobytes(): s.classes for s in scenes})
    own = judge_scenes(parser, iter(scenes), 11)
    other = judge_scenes(parser, iter(_rotated(scenes)), 11)
    assert own["scenes"] == 60 and own["miou"] == pytest.approx(1.0)
    assert own["shapes_found"] >= 0.95 and own["objects_found"] >= 0.9, own
    assert other["objects_found"] <= 0.2 and other["miou"] <= 0.5, other


def test_the_relation_line_is_read_and_judged_on_the_picture(scenes):
    from vqct.data.scenes.world import COLOURS, SHAPES
    from vqct.eval.scene_relations import AskedRelation, asked_relation

    colours = list(COLOURS)
    star, circle = SHAPES.index("star"), SHAPES.index("circle")
    red, blue = colours.index("red"), colours.index("blue")
    assert asked_relation("two shapes on a grid background: a red star and a blue circle\n"
                          "a large red striped star left of a blue circle") == \
        AskedRelation((star, red), "left of", (circle, blue))
    assert asked_relation("a red star in front of a blue circle") is None  # depth: not judged from a map
    assert asked_relation("a picture of a large red star") is None
    parser = OracleParser({s.picture.tobytes(): s.classes for s in scenes})
    own = judge_scenes(parser, iter(scenes), 11)
    other = judge_scenes(parser, iter(_rotated(scenes)), 11)
    # the scenes' relation lines, on the true class maps: what a judge that reads the maps right finds
    assert own["relations_asked"] >= 30 and own["relations_held"] >= 0.85, own
    assert other["relations_held"] <= 0.1, other


def test_a_recoloured_object_is_lost_by_colour_and_kept_by_shape(scenes):
    scene = next(s for s in scenes if len(s.objects) == 1)
    shape, colour = scene.objects[0]
    assert objects_found(scene.picture, scene.classes, scene.objects) == (1, 1)
    other_colour = (colour + 5) % 10
    assert objects_found(scene.picture, scene.classes, [(shape, other_colour)]) == (0, 1)
    assert objects_found(scene.picture, scene.classes, [((shape + 1) % 10, colour)]) == (0, 0)


def test_completion_is_scored_on_the_generated_half_against_the_same_key(scenes):
    from vqct.eval.completion import completion_scores, psnr
    from vqct.eval.scene_judge import AskedScene

    real = {s.key: s.picture for s in scenes[:10]}
    blanked = []
    for s in scenes[:10]:
        picture = s.picture.copy()
        picture[32:] = 0  # a generator that wrote black below the given half
        blanked.append(AskedScene(s.key, picture, s.classes, s.objects))
    stranger = AskedScene("not-a-real-key", scenes[0].picture, scenes[0].classes, scenes[0].objects)
    found = completion_scores(blanked + [stranger], real)
    assert found["completion_scored"] == 10 and found["completion_unmatched"] == 1
    assert found["completion_psnr_given_half"] == 100.0  # the given half is the real one
    expected = np.mean([psnr(np.zeros_like(s.picture[32:]), s.picture[32:]) for s in scenes[:10]])
    assert found["completion_psnr_generated_half"] == pytest.approx(expected)
    assert found["completion_psnr_generated_half"] < 15


def test_inception_fid_joins_fid_parser_where_its_weights_are_and_says_so_where_not(scenes, inception_file, tmp_path):
    from vqct.eval.fid import InceptionFID
    from vqct.models.scene_parser import SceneParser

    torch.manual_seed(0)
    parser = SceneParser(11, width=8).eval()
    real = np.stack([s.picture for s in scenes[:16]])
    same = judge_scenes(parser, iter(scenes[:16]), 11, real, inception=InceptionFID(inception_file, "cpu"))
    other = judge_scenes(parser, iter(scenes[16:32]), 11, real, inception=InceptionFID(inception_file, "cpu"))
    assert isinstance(other["fid_inception"], float) and other["fid_inception"] > 0
    assert abs(same["fid_inception"]) < 1e-3 * other["fid_inception"]  # the real set against itself
    assert other["fid_parser"] > 0
    missing = judge_scenes(parser, iter(scenes[16:32]), 11, real, inception=InceptionFID(tmp_path / "none.pth", "cpu"))
    assert missing["fid_inception"] == f"skipped: no Inception weights at {tmp_path / 'none.pth'}"
    assert "fid_inception" not in judge_scenes(parser, iter(scenes[:4]), 11)  # no real set, no FID at all


def test_picture_fid_reads_any_image_shards_passes_over_broken_pictures_and_stops_at_the_limit(inception_file,
                                                                                             tmp_path):
    import io

    import webdataset as wds
    from PIL import Image

    from vqct.downstream.judge import picture_fid

    with wds.TarWriter(str(tmp_path / "real-000000.tar")) as sink:
        for i in range(5):
            picture = Image.new("RGB", (40, 30 + i), (40 * i, 100, 200 - 30 * i))
            buffer = io.BytesIO()
            picture.save(buffer, format="PNG")
            sink.write({"__key__": f"k{i}", "png": buffer.getvalue(), "txt": b"a caption"})
        sink.write({"__key__": "broken", "jpg": b"not a picture", "txt": b"a caption"})
        sink.write({"__key__": "no-image", "txt": b"a caption"})
    shards = [str(tmp_path / "real-000000.tar")]
    found = picture_fid(shards, shards, 32, inception_weights=str(inception_file))
    assert (found["pictures"], found["skipped_pictures"], found["real_pictures"]) == (5, 2, 5)
    assert abs(found["fid_inception"]) < 1e-2  # the same pictures on both sides
    assert picture_fid(shards, shards, 32, limit=3, inception_weights=str(inception_file))["pictures"] == 3
    with pytest.raises(UserError, match="give --inception-weights FILE"):
        picture_fid(shards, shards, 32, inception_weights=str(tmp_path / "none.pth"))
    with pytest.raises(UserError, match="at least 2 pictures"):
        picture_fid(shards, shards, 32, limit=1, inception_weights=str(inception_file))
