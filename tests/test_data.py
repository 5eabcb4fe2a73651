"""Shapes shards, shard resolution, decoding, and the streaming loader."""

import hashlib
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from vqct.data.decode import BadSample, decode_image
from vqct.config import DataConfig
from vqct.data.loader import ImageCaptionStream, Loader, NoUsableSamples, make_loader
from vqct.data.shapes import write_shapes
from vqct.data.shards import check_reader_count, resolve_shards
from vqct.errors import UserError


def _keys(loader, limit=None):
    keys = []
    for i, batch in enumerate(loader):
        keys.extend(batch.keys)
        if limit is not None and i + 1 >= limit:
            break
    return keys


def _set_rank(monkeypatch, rank, world):
    # webdataset's own splitters read the rank from these (or from torch.distributed).
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))


# ---- shapes ---------------------------------------------------------------------------

def test_shapes_are_deterministic_and_captions_compositional(tmp_path):
    a = write_shapes(tmp_path / "a", 40, 16, 32, seed=3, val_fraction=0.25)
    write_shapes(tmp_path / "b", 40, 16, 32, seed=3, val_fraction=0.25)
    assert (a["train_samples"], a["val_samples"], a["train_shards"], a["val_shards"]) == (30, 10, 2, 1)
    digest = lambda d: [hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*.tar"))]  # noqa: E731
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    samples = list(wds.WebDataset(str(tmp_path / "a/train/shapes-000000.tar"), shardshuffle=False))
    assert {"jpg", "txt", "json"} <= set(samples[0])
    for s in samples:
        caption, meta = s["txt"].decode(), json.loads(s["json"])
        assert caption == meta["caption"] and caption.startswith("a ")
        assert len(meta["objects"]) == (1 if meta["relation"] is None else 2)
        for obj in meta["objects"]:
            assert f"{obj['size']} {obj['colour']} {obj['shape']}" in caption
        if meta["relation"]:
            assert f" {meta['relation']} " in caption


# ---- shard resolution -------------------------------------------------------------------

def test_resolve_directory_brace_list_and_remote(shapes_dir):
    from_dir = resolve_shards(str(shapes_dir / "train"))
    assert len(from_dir) == 6 and all(Path(u).is_absolute() for u in from_dir)
    brace = resolve_shards(str(shapes_dir / "train/shapes-{000000..000002}.tar"))
    assert brace == from_dir[:3]
    assert resolve_shards([from_dir[0], from_dir[5]]) == [from_dir[0], from_dir[5]]
    remote = resolve_shards("pipe:curl -s http://host/shards-{0..3}.tar")
    assert remote == [f"pipe:curl -s http://host/shards-{i}.tar" for i in range(4)]


def test_no_shards_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no shards found"):
        resolve_shards(str(tmp_path / "nothing-here"))
    assert check_reader_count(["a.tar", "b.tar"], ranks=2, workers_per_rank=2, what="data.val_shards")
    assert not check_reader_count(["a.tar", "b.tar"], ranks=2, workers_per_rank=1, what="data.val_shards")


# ---- decoding -------------------------------------------------------------------------------

def _encode(image, fmt, **kw):
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("mode,fmt", [("L", "PNG"), ("RGBA", "PNG"), ("CMYK", "JPEG"), ("P", "PNG"),
                                      ("I;16", "PNG"), ("RGB", "WEBP")])
def test_decode_converts_every_mode_to_rgb(mode, fmt):
    if mode == "I;16":
        image = Image.fromarray(np.full((20, 30), 65535, dtype=np.uint16))
    else:
        image = Image.new(mode, (30, 20), color=200 if mode in ("L", "P") else None)
    out = decode_image(_encode(image, fmt), 16)
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32
    assert -1.0 <= out.min() <= out.max() <= 1.0
    if mode == "I;16":  # full-scale 16-bit white must stay white, not clip to garbage
        assert out.min() > 0.99


def test_decode_rejects_garbage():
    with pytest.raises(BadSample) as err:
        decode_image(b"definitely not an image", 16)
    assert err.value.kind == "bad_image"


# ---- the loader -------------------------------------------------------------------------------

def _keys_over_two_ranks_and_two_workers(urls, monkeypatch) -> list[str]:
    seen = []
    for rank in range(2):
        _set_rank(monkeypatch, rank, 2)
        stream = ImageCaptionStream(urls, image_size=16, seed=1, shuffle_buffer=20, epochs=1)
        seen.extend(_keys(Loader(stream, batch_size=1, num_workers=2)))
    return seen


def test_exactly_once_per_epoch_over_two_ranks_and_two_workers(shapes_dir, monkeypatch):
    urls = resolve_shards(str(shapes_dir / "train"))
    expected = {s["__key__"] for s in wds.WebDataset(urls, shardshuffle=False)}
    seen = _keys_over_two_ranks_and_two_workers(urls, monkeypatch)
    assert len(seen) == len(expected) == 240
    assert Counter(seen) == Counter(expected)  # every sample once, none twice


@pytest.mark.e2e  # starts a server
def test_shards_in_an_object_store_are_read_exactly_once_too(shapes_dir, monkeypatch, tmp_path):
    """s3://BUCKET/PREFIX (moto's S3 API server): its .tar objects, listed and read through
    pyarrow in every reader process, give each sample once over two ranks and two workers."""
    import boto3

    from servers import s3_env, start_s3_server, stop

    server, endpoint = start_s3_server(tmp_path)
    try:
        for key, value in s3_env(endpoint).items():
            monkeypatch.setenv(key, value)
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket="shards")
        local = resolve_shards(str(shapes_dir / "train"))
        for url in local:
            client.upload_file(url, "shards", f"shapes/train/{Path(url).name}")
        client.put_object(Bucket="shards", Key="shapes/train/notes.txt", Body=b"not a shard")
        urls = resolve_shards("s3://shards/shapes/train")
        assert urls == [f"s3://shards/shapes/train/{Path(u).name}" for u in local]
        expected = {s["__key__"] for s in wds.WebDataset(local, shardshuffle=False)}
        seen = _keys_over_two_ranks_and_two_workers(urls, monkeypatch)
        assert Counter(seen) == Counter(expected) and len(seen) == 240
    finally:
        stop(server, timeout=10)


def test_uneven_shards_give_equal_step_counts(shapes_dir, monkeypatch):
    # 3 shards of 44, 44 and 20 samples over 2 ranks: rank 0 holds 2 shards, rank 1 one.
    urls = resolve_shards(str(shapes_dir / "train"))
    small = [urls[0], urls[1], urls[5]]
    steps = 30  # several epochs for both ranks
    per_rank = []
    for rank in range(2):
        _set_rank(monkeypatch, rank, 2)
        loader = make_loader(small, DataConfig(image_size=16, batch_size=8, num_workers=1, shuffle_buffer=16,
                                                random_crop=False), seed=0)
        keys = _keys(loader, limit=steps)
        per_rank.append(keys)
    assert [len(k) // 8 for k in per_rank] == [steps, steps]
    assert len(set(per_rank[0])) < len(per_rank[0])  # the stream went on into later epochs


def _write_fault_shard(path: Path, good_jpeg: bytes):
    with wds.TarWriter(str(path)) as sink:
        sink.write({"__key__": "good0", "jpg": good_jpeg, "txt": "a red circle"})
        sink.write({"__key__": "badimage", "jpg": b"\xff\xd8\xff truncated", "txt": "a red circle"})
        sink.write({"__key__": "nocaption", "jpg": good_jpeg})
        sink.write({"__key__": "latin1", "jpg": good_jpeg, "txt": "caf\xe9".encode("latin-1")})
        sink.write({"__key__": "empty", "jpg": good_jpeg, "txt": ""})
        sink.write({"__key__": "onlyjson", "json": b"{}"})
        sink.write({"__key__": "good1", "png": _encode(Image.new("RGBA", (40, 40)), "PNG"), "txt": "a square"})


def test_corrupt_samples_are_skipped_and_counted(tmp_path):
    good = _encode(Image.new("RGB", (32, 32), (255, 0, 0)), "JPEG")
    _write_fault_shard(tmp_path / "faults.tar", good)
    # A truncated tar: a valid shard cut in the middle of its second member.
    with wds.TarWriter(str(tmp_path / "cut.tar")) as sink:
        for i in range(3):
            sink.write({"__key__": f"cut{i}", "jpg": good, "txt": "a blue diamond"})
    data = (tmp_path / "cut.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: len(data) // 2])

    stream = ImageCaptionStream([str(tmp_path / "faults.tar"), str(tmp_path / "cut.tar")],
                                image_size=16, shuffle_buffer=0, epochs=1)
    loader = Loader(stream, batch_size=1, num_workers=0)
    keys = _keys(loader)
    assert {"good0", "good1", "cut0"} <= set(keys)
    assert not {"badimage", "nocaption", "latin1", "empty", "onlyjson"} & set(keys)
    skipped = loader.skipped
    assert skipped["bad_image"] == 1
    assert skipped["missing_caption"] == 2  # no .txt, and an empty one
    assert skipped["bad_caption"] == 1
    assert skipped["missing_image"] == 1
    assert skipped["tar_error"] >= 1


def test_skip_counts_are_totalled_across_reader_processes(tmp_path):
    good = _encode(Image.new("RGB", (32, 32)), "JPEG")
    for i in range(2):
        _write_fault_shard(tmp_path / f"f{i}.tar", good)
    stream = ImageCaptionStream([str(tmp_path / "f0.tar"), str(tmp_path / "f1.tar")], image_size=16,
                                shuffle_buffer=0, epochs=1)
    loader = Loader(stream, batch_size=1, num_workers=2)
    assert len(_keys(loader)) == 4
    assert loader.skipped["bad_image"] == 2 and loader.skipped["missing_caption"] == 4


def test_pipe_urls_are_read_through_webdataset(shapes_dir):
    urls = [f"pipe:cat {u}" for u in resolve_shards(str(shapes_dir / "val"))]
    stream = ImageCaptionStream(urls, image_size=16, shuffle_buffer=0, epochs=1)
    assert len(_keys(Loader(stream, batch_size=4, num_workers=0))) == 60


def test_one_caption_at_random_when_a_sample_has_several():
    from vqct.data.decode import decode_caption

    seen = {decode_caption(b"a red circle\n a blue square \n\n") for _ in range(50)}
    assert seen == {"a red circle", "a blue square"}
    assert decode_caption(b"  one caption only ") == "one caption only"


def test_one_pass_over_the_fault_corpus_skips_exactly_the_broken_samples(tmp_path):
    from fault_corpus import EXPECTED_SKIPS, USABLE, write_fault_corpus

    shards = write_fault_corpus(tmp_path)
    items = list(ImageCaptionStream([str(p) for p in shards], 32, shuffle_buffer=0, epochs=1))
    assert len(items) == USABLE
    assert {k: v for k, v in items[-1]["skipped"].items() if v} == EXPECTED_SKIPS
    used = {item["key"].split("_", 1)[1] for item in items}
    assert {"png_named_jpg", "cmyk_jpeg", "png_16bit", "one_pixel", "huge_10000"} <= used
    assert all(item["image"].shape == (3, 32, 32) for item in items)


def test_a_shard_with_nothing_usable_is_reported_not_spun_on(tmp_path):
    from fault_corpus import write_fault_corpus

    stream = ImageCaptionStream([str(p) for p in write_fault_corpus(tmp_path, usable=False)], 32, shuffle_buffer=0)
    with pytest.raises(NoUsableSamples, match="no usable sample"):
        next(iter(stream))


# ---- real shard sets: fewer shards than readers, empty shards, counts beside the tars -----------

def test_one_shard_for_four_readers_is_still_read_exactly_once(shapes_dir, monkeypatch):
    """A single held-out tar with 2 ranks x 2 loader workers: every reader reads the shard and
    keeps one sample in 4."""
    url = resolve_shards(str(shapes_dir / "val"))[:1]
    expected = [s["__key__"] for s in wds.WebDataset(url, shardshuffle=False)]
    seen = []
    for rank in range(2):
        _set_rank(monkeypatch, rank, 2)
        stream = ImageCaptionStream(url, image_size=16, seed=1, shuffle_buffer=0, epochs=1)
        seen.extend(_keys(Loader(stream, batch_size=1, num_workers=2)))
    assert len(expected) == 44 and Counter(seen) == Counter(expected)


def test_a_reader_whose_shards_are_all_empty_falls_back_instead_of_stopping(shapes_dir, tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty.tar"
    with wds.TarWriter(str(empty)):
        pass
    urls = [resolve_shards(str(shapes_dir / "val"))[0], str(empty)]  # rank 1 gets only the empty tar
    for rank in range(2):
        _set_rank(monkeypatch, rank, 2)
        stream = ImageCaptionStream(urls, image_size=16, seed=0, shuffle_buffer=0, epochs=1)
        keys = _keys(Loader(stream, batch_size=1, num_workers=0))
        assert len(keys) == (44 if rank == 0 else 22) and len(set(keys)) == len(keys)
    assert "reads every shard and keeps one sample in 2 from now on" in capsys.readouterr().err
    # Nothing usable anywhere: then, and only then, the stream stops.
    _set_rank(monkeypatch, 0, 1)
    with pytest.raises(NoUsableSamples, match="no usable sample in any of the 1 shards"):
        next(iter(ImageCaptionStream([str(empty)], 16, shuffle_buffer=0)))


def test_shards_known_to_be_empty_are_passed_over(tmp_path, capsys):
    from vqct.data.shards import drop_empty, known_counts

    packed, scraped = tmp_path / "packed", tmp_path / "img2dataset"
    packed.mkdir()
    scraped.mkdir()
    names = ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    for name in names:
        (packed / name).write_bytes(b"")
    (packed / "manifest.json").write_text(json.dumps({"shards": [{"name": names[0], "samples": 5},
                                                                 {"name": names[1], "samples": 0}]}))
    for stem, successes in (("00000", 9), ("00001", 0)):
        (scraped / f"{stem}.tar").write_bytes(b"")
        (scraped / f"{stem}_stats.json").write_text(json.dumps({"successes": successes, "failed_to_download": 3}))
    (scraped / "00000.parquet").write_bytes(b"PAR1")  # what img2dataset writes beside: not a shard
    urls = resolve_shards([str(packed), str(scraped)])
    assert [Path(u).name for u in urls] == names + ["00000.tar", "00001.tar"]
    assert known_counts(urls) == {str(packed / names[0]): 5, str(packed / names[1]): 0,
                                  str(scraped / "00000.tar"): 9, str(scraped / "00001.tar"): 0}
    kept, empty = drop_empty(urls, "data.train_shards")
    assert [Path(u).name for u in kept] == [names[0], names[2], "00000.tar"]  # unknown counts are kept
    assert [Path(u).name for u in empty] == [names[1], "00001.tar"]
    assert "2 of 5 shards hold no sample" in capsys.readouterr().err
    with pytest.raises(UserError, match="all 2 shards hold no sample"):
        drop_empty(empty, "data.val_shards")


def test_shards_over_http_and_a_shard_that_cannot_be_fetched(shapes_dir, monkeypatch, capsys):
    """webdataset's own URL handling (curl) against a server on 127.0.0.1; a missing shard is
    counted like a broken one and the epoch goes on."""
    from servers import start_file_server, stop

    _set_rank(monkeypatch, 0, 1)
    server, base = start_file_server(shapes_dir / "val")
    try:
        names = sorted(p.name for p in (shapes_dir / "val").glob("*.tar"))
        urls = resolve_shards([f"{base}/{names[0]}", f"{base}/no-such-shard.tar", f"{base}/{names[1]}"])
        stream = ImageCaptionStream(urls, image_size=16, shuffle_buffer=0, epochs=1)
        loader = Loader(stream, batch_size=4, num_workers=0)
        keys = _keys(loader)
    finally:
        stop(server, timeout=10)
    expected = [s["__key__"] for s in wds.WebDataset([str(shapes_dir / "val" / n) for n in names], shardshuffle=False)]
    assert sorted(keys) == sorted(expected) and len(keys) == 60
    # Counted once (its count travels with the batches after it: read from the warning line).
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if "skipped sample (tar_error)" in ln]
    assert len(warnings) == 1 and "no-such-shard.tar" in warnings[0]
