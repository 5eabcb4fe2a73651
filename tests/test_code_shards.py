"""`vqct data tokenize`: code shards made on real Ray tasks hold each sample's codes as the
tokenizer gives them, its caption and ground truth; a killed set resumes shard by shard; a bad
image is skipped and counted; codes of two tokenizers are refused together."""

import io
import json

import numpy as np
import pytest
import torch
import webdataset as wds

from vqct.config import load_recipe
from vqct.data.code_loader import CodeDecoder, grid_classes, make_code_loader
from vqct.data.decode import decode_image
from vqct.errors import UserError
from vqct.launch.tokenize_shards import tokenize_to_shards
from vqct.records.code_manifest import read_code_manifest, same_tokenizer
from vqct.stage2.code_shards import code_layout
from vqct.tokenizer import build_tokenizer
from vqct.tokenizer.pretrained import from_pretrained, save_pretrained


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _tokenizer(tmp_path, seed):
    cfg = load_recipe("vqgan_shapes")
    torch.manual_seed(seed)
    return save_pretrained(build_tokenizer(cfg), cfg, tmp_path / f"tok{seed}")


def _samples(directory):
    urls = sorted(str(p) for p in directory.glob("codes-*.tar"))
    return list(wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples()))


def test_codes_are_the_tokenizers_and_a_killed_set_resumes(shapes_dir, tmp_path, ray_local):
    tok = _tokenizer(tmp_path, 0)
    out = tmp_path / "codes"
    first = tokenize_to_shards(str(tok), str(shapes_dir / "train"), str(out), batch_size=16)
    assert (first["shards"], first["tokenized"], first["samples"]) == (6, 6, 240)
    manifest = read_code_manifest(out)
    assert manifest["complete"] and manifest["tokenizer"]["layout"] == {"groups": [["codes", 256, 1]],
                                                                        "height": 8, "width": 8}

    model, cfg = from_pretrained(tok)
    source = {s["__key__"]: s for s in wds.DataPipeline(
        wds.SimpleShardList(sorted(str(p) for p in (shapes_dir / "train").glob("*.tar"))), wds.tarfile_to_samples())}
    samples = _samples(out)
    assert len(samples) == 240 and len({s["__key__"] for s in samples}) == 240
    for sample in samples[:20]:
        codes = np.load(io.BytesIO(sample["codes.npy"]))
        original = source[sample["__key__"]]
        expected = model.tokenize(decode_image(original["jpg"], cfg.data.image_size)[None])[0]
        assert codes.shape == (8, 8, 1) and codes.dtype == np.int32
        assert torch.equal(torch.from_numpy(codes[..., 0]).long(), expected)
        assert sample["txt"] == original["txt"] and "jpg" not in sample

    # the set carries its tokenizer, and tokenizing with that copy pins the same digest
    again_from_copy = tokenize_to_shards(str(out / "tokenizer"), str(shapes_dir / "val"), str(tmp_path / "v"))
    assert again_from_copy["tokenizer"] == first["tokenizer"]

    # the stage-2 loader reads each sample once an epoch, in (B, L, columns)
    loader = make_code_loader(sorted(str(p) for p in out.glob("codes-*.tar")), CodeDecoder(8, 8, 1), 32, 0, seed=0,
                              shuffle_buffer=64, epochs=1)
    batches = list(loader)
    assert sum(len(b.keys) for b in batches) == 240 and len({k for b in batches for k in b.keys}) == 240
    assert batches[0].codes.shape == (32, 64, 1) and batches[0].segmentation is None
    first_key = batches[0].keys[0]
    stored = next(s for s in samples if s["__key__"] == first_key)
    assert torch.equal(batches[0].codes[0, :, 0], torch.from_numpy(np.load(io.BytesIO(stored["codes.npy"]))).reshape(-1).long())

    victim = out / "codes-000002.tar"
    kept = (out / "codes-000004.tar").read_bytes()
    victim.unlink()
    again = tokenize_to_shards(str(tok), str(shapes_dir / "train"), str(out), batch_size=16)
    assert (again["tokenized"], again["samples"]) == (1, 240)
    assert victim.is_file() and (out / "codes-000004.tar").read_bytes() == kept


def test_a_bad_image_is_skipped_and_counted(tmp_path, ray_local):
    from vqct.data.shapes import write_shapes

    write_shapes(tmp_path / "src", num_samples=10, samples_per_shard=10, image_size=32, seed=1, val_fraction=0.0)
    shard = next((tmp_path / "src" / "train").glob("*.tar"))
    good = list(wds.DataPipeline(wds.SimpleShardList([str(shard)]), wds.tarfile_to_samples()))
    with wds.TarWriter(str(tmp_path / "mixed.tar")) as sink:
        for i, s in enumerate(good[:4]):
            sample = {"__key__": s["__key__"], "jpg": s["jpg"] if i != 1 else b"not a jpeg", "txt": s["txt"]}
            sink.write(sample)
    result = tokenize_to_shards(str(_tokenizer(tmp_path, 0)), str(tmp_path / "mixed.tar"), str(tmp_path / "codes"))
    assert result["samples"] == 3 and result["skipped"] == {"bad_image": 1}


def test_codes_of_two_tokenizers_are_refused_together(shapes_dir, tmp_path, ray_local):
    a = tokenize_to_shards(str(_tokenizer(tmp_path, 0)), str(shapes_dir / "val"), str(tmp_path / "a"))
    b = tokenize_to_shards(str(_tokenizer(tmp_path, 1)), str(shapes_dir / "val"), str(tmp_path / "b"))
    assert a["tokenizer"] != b["tokenizer"]
    assert same_tokenizer([tmp_path / "a", tmp_path / "a"])["digest"].startswith(a["tokenizer"])
    with pytest.raises(UserError, match="codes of two tokenizers"):
        same_tokenizer([tmp_path / "a", tmp_path / "b"])
    # the same directory, another tokenizer: it starts over instead of mixing codes
    again = tokenize_to_shards(str(_tokenizer(tmp_path, 1)), str(shapes_dir / "val"), str(tmp_path / "a"))
    assert again["tokenized"] == 2 and json.loads((tmp_path / "a" / "manifest.json").read_text())[
        "tokenizer"]["digest"].startswith(b["tokenizer"])


def test_vqct_positions_hold_adjectives_then_the_noun():
    cfg = load_recipe("vqct_shapes")
    words = torch.randn(10, 6)
    priors = {"adjective_embeddings": words[:4], "noun_embeddings": words[4:],
              "edge_index": torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]]), "edge_weight": torch.ones(4)}
    layout = code_layout(build_tokenizer(cfg, priors), cfg)
    assert layout.groups == (("adj", 4, cfg.quantizer.adj_topk), ("noun", 6, 1))
    assert layout.columns == cfg.quantizer.adj_topk + 1 and layout.height == cfg.token_grid


def test_segmentation_at_the_grid_is_each_cells_most_frequent_class():
    classes = np.zeros((8, 8), dtype=np.uint8)
    classes[0:4, 0:4] = 3  # a whole cell
    classes[4:7, 4:8] = 2  # 12 of 16 pixels of the last cell
    classes[0:2, 4:8] = 1  # half a cell: a tie with background goes to the lower class
    grid = grid_classes(classes, 2, 4)
    assert grid.tolist() == [[3, 0], [0, 2]]
