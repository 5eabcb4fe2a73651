"""`vqct data pack` from each layout users have, with planted faults, and `vqct data inspect`:
the manifest's counts equal what the loader then reads exactly once per epoch."""

import json
import os
import subprocess

import pytest
from PIL import Image

from conftest import REPO, vqct_cmd
from vqct.data.loader import ImageCaptionStream, Loader
from vqct.data.pack import PackSettings, pack, read_source
from vqct.data.shards import resolve_shards
from vqct.records.command_output import last_json


def _image(path, colour=(200, 30, 30), size=(40, 30), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format=fmt)
    return path


def _vqct(*args, cwd):
    proc = subprocess.run(vqct_cmd() + list(args), capture_output=True, text=True, cwd=cwd, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    return proc


def _read_all(directory, image_size=16):
    """Every sample key the loader yields in one epoch, and what it skipped."""
    stream = ImageCaptionStream(resolve_shards(str(directory)), image_size=image_size, shuffle_buffer=0, epochs=1)
    loader = Loader(stream, batch_size=4, num_workers=0)
    keys, captions = [], []
    for batch in loader:
        keys.extend(batch.keys)
        captions.extend(batch.captions)
    return keys, captions, loader.skipped


@pytest.fixture
def folder(tmp_path):
    """12 good images with captions; a corrupt one, one without a caption, a byte-for-byte copy."""
    root = tmp_path / "photos"
    for i in range(12):
        _image(root / f"sub{i % 2}" / f"img{i:02d}.jpg", colour=(20 * i, 100, 50))
        (root / f"sub{i % 2}" / f"img{i:02d}.txt").write_text(f"a photo number {i}\nanother caption {i}\n")
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "broken.txt").write_text("a broken image")
    _image(root / "lonely.png", fmt="PNG")  # no caption file
    copy = root / "copy.jpg"
    copy.write_bytes((root / "sub0" / "img00.jpg").read_bytes())
    (root / "copy.txt").write_text("the same picture again")
    return root


def test_a_folder_with_faults_packs_the_good_samples_and_reports_the_rest(folder, tmp_path):
    out = tmp_path / "shards"
    args = type("A", (), {"images": str(folder)})
    items, skipped = read_source("folder", args)
    settings = PackSettings(val_fraction=0.25, seed=0, samples_per_shard=4, resize=16, crop=True)
    result = pack(items, out, settings, workers=2, listing_skipped=skipped)
    assert result["skipped"] == {"unreadable_image": 1, "missing_image": 0, "missing_caption": 1, "duplicate": 1}
    assert result["packed"]["train"] + result["packed"]["val"] == 12 and result["packed"]["val"] > 0
    lines = (out / "skipped.tsv").read_text().splitlines()
    assert lines[0] == "kind\tsource\tdetail" and len(lines) == 4
    assert any(ln.startswith("unreadable_image\t") and "broken.jpg" in ln for ln in lines)
    for split in ("train", "val"):
        manifest = json.loads((out / split / "manifest.json").read_text())
        assert manifest["complete"] and manifest["samples"] == result["packed"][split]
        keys, captions, skipped_reading = _read_all(out / split)
        assert len(keys) == len(set(keys)) == manifest["samples"]  # exactly once per epoch
        assert sum(skipped_reading.values()) == 0
        assert sum(e["samples"] for e in manifest["shards"]) == manifest["samples"]
        assert all(e["samples"] <= 4 for e in manifest["shards"])
    metas, texts = _tar_samples(out)
    assert len(metas) == 12
    assert {(m["width"], m["height"], tuple(m["original_size"])) for m in metas} == {(16, 16, (40, 30))}
    # every caption line of an image travels with it; the byte copy that sorts first is the one kept
    assert sorted(m["captions"] for m in metas) == [1] + [2] * 11
    assert all(m["captions"] == len(t.splitlines()) for m, t in zip(metas, texts))
    assert sum(t.startswith("a photo number") for t in texts) == 11


def _tar_samples(out):
    """(json metadata, caption text) of every sample in every shard under out, in one order."""
    metas, texts = [], []
    for tar_path in sorted(out.glob("*/*.tar")):
        m, t = _tar_samples_of(tar_path)
        metas += m
        texts += t
    return metas, texts


def _tar_samples_of(tar_path):
    import tarfile

    metas, texts = [], []
    with tarfile.open(tar_path) as tar:
        names = sorted(tar.getnames())
        assert {n.rsplit(".", 1)[1] for n in names} == {"jpg", "txt", "json"}
        for name in (n for n in names if n.endswith(".json")):
            metas.append(json.loads(tar.extractfile(name).read()))
            texts.append(tar.extractfile(name[:-len("json")] + "txt").read().decode())
    return metas, texts


def test_the_hash_split_is_the_same_wherever_the_dataset_sits(folder, tmp_path):
    settings = PackSettings(val_fraction=0.5, seed=3, samples_per_shard=4)

    def split_of_each_image(root, out):
        pack(read_source("folder", type("A", (), {"images": str(root)}))[0], out, settings, workers=1)
        return {(tar.parent.name, os.path.relpath(m["source"], root))
                for tar in sorted(out.glob("*/*.tar")) for m in _tar_samples_of(tar)[0]}

    before = split_of_each_image(folder, tmp_path / "out1")
    moved = tmp_path / "elsewhere" / "deeper" / "photos"
    moved.parent.mkdir(parents=True)
    folder.rename(moved)
    after = split_of_each_image(moved, tmp_path / "out2")
    assert before == after and len(before) == 12
    assert {split for split, _ in before} == {"train", "val"}


def test_packing_again_keeps_the_shards_written_and_rewrites_a_damaged_one(folder, tmp_path):
    out = tmp_path / "shards"
    args = type("A", (), {"images": str(folder)})
    settings = PackSettings(val_fraction=0.0, samples_per_shard=5)
    first = pack(*[read_source("folder", args)[0]], out, settings, workers=1)
    tars = sorted((out / "train").glob("*.tar"))
    stamps = {p.name: p.stat().st_mtime_ns for p in tars}
    with open(tars[1], "r+b") as f:  # damage one shard
        f.seek(600)
        f.write(b"XXXX")
    second = pack(*[read_source("folder", args)[0]], out, settings, workers=1)
    assert second["packed"] == first["packed"] == {"train": 12}
    assert first["shards_kept"] == {"train": 0} and second["shards_kept"] == {"train": 2}
    again = {p.name: p.stat().st_mtime_ns for p in sorted((out / "train").glob("*.tar"))}
    assert again[tars[0].name] == stamps[tars[0].name] and again[tars[2].name] == stamps[tars[2].name]
    assert again[tars[1].name] != stamps[tars[1].name]  # only the damaged one was written again
    keys, _, _ = _read_all(out / "train")
    assert len(keys) == 12
    with pytest.raises(Exception, match="other inputs or settings"):
        pack(read_source("folder", args)[0], out, PackSettings(val_fraction=0.0, samples_per_shard=3), workers=1)


def test_coco_annotations_keep_every_caption_of_an_image(tmp_path):
    images = tmp_path / "train2017"
    for i in range(6):
        _image(images / f"{i:012d}.jpg", colour=(40 * i, 0, 0))
    annotations = {"images": [{"id": i, "file_name": f"{i:012d}.jpg"} for i in range(7)],  # 6: no file
                   "annotations": [{"image_id": i, "caption": f"caption {k} of {i}"}
                                   for i in range(5) for k in range(3)]
                   + [{"image_id": 99, "caption": "an image nobody listed"}]}
    (tmp_path / "captions_train2017.json").write_text(json.dumps(annotations))
    out = tmp_path / "coco"
    proc = _vqct("data", "pack", "coco", "--annotations", str(tmp_path / "captions_train2017.json"),
                 "--images", str(images), "--out", str(out), "--split", "train", "--workers", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = last_json(proc.stdout)
    # image 5 has no caption, 6 no file; 99 has no image entry
    assert result["packed"] == {"train": 5}
    assert result["skipped"]["missing_caption"] == 2 and result["skipped"]["missing_image"] == 1
    keys, captions, _ = _read_all(out / "train")
    assert len(keys) == 5 and all(c.startswith("caption ") for c in captions)


def test_cub_trees_follow_the_official_split(tmp_path):
    root = tmp_path / "CUB_200_2011"
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross"]
    lines, split = [], []
    for c, name in enumerate(classes):
        for k in range(3):
            rel = f"{name}/bird_{c}_{k}.jpg"
            _image(root / "images" / rel, colour=(c * 100, k * 50, 0))
            text = tmp_path / "text_c10" / name / f"bird_{c}_{k}.txt"
            text.parent.mkdir(parents=True, exist_ok=True)
            text.write_text("\n".join(f"this bird {j} has a white belly" for j in range(10)))
            index = len(lines) + 1
            lines.append(f"{index} {rel}")
            split.append(f"{index} {0 if k == 2 else 1}")
    (root / "images.txt").write_text("\n".join(lines))
    (root / "train_test_split.txt").write_text("\n".join(split))
    (tmp_path / "text_c10" / classes[0] / "orphan.txt").write_text("no image for this one")
    out = tmp_path / "cub"
    proc = _vqct("data", "pack", "cub", "--images", str(root / "images"), "--text", str(tmp_path / "text_c10"),
                 "--out", str(out), "--workers", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = last_json(proc.stdout)
    assert result["packed"] == {"train": 4, "val": 2} and result["skipped"]["missing_image"] == 1
    _, captions, _ = _read_all(out / "val")
    assert len(captions) == 2 and all(c.startswith("this bird") for c in captions)


@pytest.mark.parametrize("kind", ["csv", "tsv", "parquet"])
def test_a_table_of_paths_and_captions(tmp_path, kind):
    import pandas as pd

    for i in range(5):
        _image(tmp_path / "img" / f"{i}.png", colour=(0, 40 * i, 0), fmt="PNG")
    rows = [{"path": f"img/{i}.png", "text": f"green square {i}"} for i in range(5)]
    rows += [{"path": "img/0.png", "text": "a second caption for image 0"}, {"path": "img/missing.png", "text": "x"}]
    frame = pd.DataFrame(rows)
    table = tmp_path / f"pairs.{kind}"
    if kind == "parquet":
        frame.to_parquet(table)
    else:
        frame.to_csv(table, sep="\t" if kind == "tsv" else ",", index=False)
    out = tmp_path / "out"
    proc = _vqct("data", "pack", "table", "--table", str(table), "--image-column", "path", "--caption-column",
                 "text", "--out", str(out), "--split", "val", "--format", "keep", "--workers", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = last_json(proc.stdout)
    assert result["packed"] == {"val": 5} and result["skipped"]["missing_image"] == 1
    keys, _, _ = _read_all(out / "val")
    assert len(keys) == 5


def test_bad_pack_arguments_are_one_line_and_exit_2(tmp_path):
    proc = _vqct("data", "pack", "table", "--table", str(tmp_path / "none.csv"), "--out", str(tmp_path / "o"),
                 cwd=tmp_path)
    assert proc.returncode == 2 and "none.csv: no such file" in proc.stderr and "Traceback" not in proc.stderr
    (tmp_path / "t.csv").write_text("a,b\n1,2\n")
    proc = _vqct("data", "pack", "table", "--table", str(tmp_path / "t.csv"), "--out", str(tmp_path / "o"),
                 cwd=tmp_path)
    assert proc.returncode == 2 and "no column 'image'" in proc.stderr
    proc = _vqct("data", "pack", "coco", "--images", str(tmp_path), "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert proc.returncode == 2 and "needs --annotations" in proc.stderr


def test_inspect_counts_shards_samples_formats_and_faults(folder, tmp_path):
    out = tmp_path / "shards"
    items, _ = read_source("folder", type("A", (), {"images": str(folder)}))
    pack(items, out, PackSettings(val_fraction=0.0, samples_per_shard=5, image_format="keep"), workers=1)
    import webdataset as wds

    with wds.TarWriter(str(out / "train" / "empty.tar")):
        pass
    with wds.TarWriter(str(out / "train" / "faulty.tar")) as sink:
        sink.write({"__key__": "a", "jpg": b"not an image", "txt": b"caption"})
        sink.write({"__key__": "b", "txt": b"caption without image"})
    proc = _vqct("data", "inspect", str(out / "train"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = last_json(proc.stdout)
    assert (result["shards"], result["samples"]) == (5, 14)
    assert [s.rsplit("/", 1)[1] for s in result["empty_shards"]] == ["empty.tar"]
    assert result["image_formats"] == {"JPEG": 12}
    assert result["unusable"]["bad_image"] == 1 and result["unusable"]["missing_image"] == 1
    assert result["image_shorter_side"]["p50"] == 30 and result["captions_per_sample"]["p50"] == 2
    assert "empty shards" in proc.stderr
