"""`vqct downstream truth`: ground-truth code sets, the downstream table's ceiling row. Each cell
names the object covering most of it (ties to the background, then the first object listed), the
codes agree with the scenes' own class maps, train and test sets pair up as one "tokenizer", and
asking for code vectors a truth set lacks is one clear error."""

import io

import numpy as np
import pytest
from PIL import Image

from vqct.config.downstream import downstream_config
from vqct.data.scenes.truth import raw_samples
from vqct.data.scenes.write import ScenesSettings, write_scenes
from vqct.downstream.code_sets import read_code_set
from vqct.downstream.run import run_downstream
from vqct.downstream.truth_codes import cell_objects, write_truth_codes
from vqct.errors import UserError
from vqct.records.code_manifest import same_tokenizer


def test_a_cell_holds_the_object_covering_most_of_it():
    instances = np.zeros((4, 4), np.int64)
    instances[:2, :2] = [[1, 1], [1, 0]]  # 3 of 4 pixels: object 1
    instances[:2, 2:] = [[2, 2], [0, 0]]  # a tie: the background
    instances[2:, :2] = [[1, 2], [2, 1]]  # a tie of two objects: the first
    instances[2:, 2:] = 2
    assert cell_objects(instances, 2).tolist() == [[1, 0], [1, 2]]
    with pytest.raises(UserError, match="grid=3"):
        cell_objects(instances, 3)


@pytest.fixture(scope="module")
def truth_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("truth")
    write_scenes(root / "scenes", ScenesSettings(train=40, val=0, test=20, test_compositional=0,
                                                 samples_per_shard=20), workers=1)
    for split in ("train", "test"):
        write_truth_codes([str(root / "scenes" / split)], root / split)
    return root


def test_truth_codes_agree_with_the_class_maps(truth_sets):
    codes = read_code_set(truth_sets / "test")
    assert codes.codes.shape == (20, 16, 16, 4)
    agree = total = 0
    for sample, grid in zip(raw_samples([str(p) for p in sorted((truth_sets / "scenes" / "test").glob("*.tar"))]),
                            codes.codes):
        classes = np.asarray(Image.open(io.BytesIO(sample["seg.png"])), np.int64)
        cells = classes.reshape(16, 4, 16, 4).transpose(0, 2, 1, 3).reshape(16, 16, 16)
        majority = np.array([[np.bincount(c, minlength=11).argmax() for c in row] for row in cells])
        agree += int((grid[..., 0].numpy() == majority).sum())
        total += majority.size
        assert ((grid[..., 0] == 0) == (grid[..., 1] == 0)).all()  # background in every column at once
    assert agree / total >= 0.97, agree / total


def test_truth_sets_pair_up_and_have_no_code_vectors(truth_sets):
    identity = same_tokenizer([truth_sets / "train", truth_sets / "test"])
    assert identity["target"] == "truth"
    assert [g[1] for g in identity["layout"]["groups"]] == [11, 11, 5, 4]
    with pytest.raises(UserError, match="features=indices"):
        run_downstream("vqa", str(truth_sets / "train"), [str(truth_sets / "test")],
                       downstream_config("vqa", ["steps=1"]), f"sqlite:///{truth_sets}/m.db")
