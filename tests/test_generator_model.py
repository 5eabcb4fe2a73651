"""A segmentation-conditioned generator as a logged MLflow model: class maps in, one image per
map, loaded in a fresh process (real MLflow, sqlite); and the batched class-map sampling that
`vqct downstream semantic` runs gives each sample its own map."""

import mlflow
import numpy as np
import pytest
import torch

from conftest import fresh_python_last_line
from vqct.config import load_recipe
from vqct.errors import UserError
from vqct.stage2.build import build_generator
from vqct.stage2.code_shards import code_layout
from vqct.stage2.generate import sample_images
from vqct.stage2.pretrained import from_pretrained_generator, write_generator_dir
from vqct.stage2.sampling import SamplingConfig
from vqct.tokenizer import build_tokenizer
from vqct.tokenizer.pretrained import save_pretrained
from vqct.tracking.generator_model import log_generator_model

SIZE = 32  # vqgan_shapes' image size


@pytest.fixture(scope="module")
def segmentation_generator(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seg_generator")
    tok_cfg = load_recipe("vqgan_shapes")
    torch.manual_seed(0)
    tokenizer = build_tokenizer(tok_cfg)
    save_pretrained(tokenizer, tok_cfg, tmp / "tok")
    cfg = load_recipe("generator_shapes", ["condition.name=segmentation", "~condition.tokens", "condition.classes=4",
                                           "generator.n_layer=1", "generator.n_embd=32"])
    layout = code_layout(tokenizer, tok_cfg)
    model = build_generator(cfg, layout)
    with torch.no_grad():  # at init (std 0.02) the map has little say in the logits: give it more
        model.condition.embed.weight.mul_(1000)
    code_set = {"layout": layout.as_dict(), "digest": "0" * 64, "tokenizer_dir": str(tmp / "tok")}
    return write_generator_dir(model, cfg, code_set, tmp / "generator")


def _maps():
    """Two class maps at the image size: background, and class 3 on the left half."""
    maps = np.zeros((2, SIZE, SIZE), np.uint8)  # as a seg.png reads
    maps[1, :, : SIZE // 2] = 3
    return maps


def test_class_maps_in_a_batch_each_condition_their_own_sample(segmentation_generator):
    gen, tokenizer = from_pretrained_generator(segmentation_generator)
    greedy = SamplingConfig(temperature=0)  # argmax: the images depend on the maps alone
    a, b = _maps()
    both = sample_images(gen, tokenizer, 2, segmentation=np.stack([a, b]), sampling=greedy)
    swapped = sample_images(gen, tokenizer, 2, segmentation=np.stack([b, a]), sampling=greedy)
    assert not torch.equal(both[0], both[1])
    assert torch.equal(both[0], swapped[1]) and torch.equal(both[1], swapped[0])
    one_for_all = sample_images(gen, tokenizer, 2, segmentation=b, sampling=greedy)
    assert torch.equal(one_for_all[0], both[1]) and torch.equal(one_for_all[1], both[1])
    with pytest.raises(UserError, match=r"classes 0 to 3"):
        sample_images(gen, tokenizer, 2, segmentation=np.full((2, SIZE, SIZE), 4), sampling=greedy)
    with pytest.raises(UserError, match=r"one per sample \(2, S, S\)"):
        sample_images(gen, tokenizer, 2, segmentation=np.zeros((3, SIZE, SIZE), np.int64), sampling=greedy)
    with pytest.raises(UserError, match="does not tile"):
        sample_images(gen, tokenizer, 2, segmentation=np.zeros((SIZE - 1, SIZE - 1), np.int64), sampling=greedy)


def test_a_segmentation_generator_is_logged_and_predicts_from_class_maps(segmentation_generator, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    run = client.create_run(client.create_experiment("generator"))
    model_id = log_generator_model(uri, run.info.run_id, segmentation_generator)
    np.save(tmp_path / "maps.npy", _maps())
    load = ("import sys, mlflow, numpy as np\n"
            f"mlflow.set_tracking_uri('{uri}')\n"
            f"m = mlflow.pyfunc.load_model('models:/{model_id}')\n"
            f"maps = np.load('{tmp_path}/maps.npy')\n"
            "out = m.predict(maps, params={'temperature': 0.0})\n"
            "flipped = m.predict(maps[::-1].copy(), params={'temperature': 0.0})\n"
            "print(out.shape, bool((out[0] != out[1]).any()), bool((out[0] == flipped[1]).all()),"
            " 'deepspeed' in sys.modules, 'ray' in sys.modules)\n")
    assert fresh_python_last_line(load, tmp_path) == f"(2, 3, {SIZE}, {SIZE}) True True False False"
