"""`vqct data scenes`: the scenes world written as WebDataset shards in the LAION layout.

Each sample is `{key}.jpg` (the picture), `{key}.txt` (its captions, one per line: the loader
picks one each time), `{key}.json` (the scene graph, the questions with their answers and
programs, the picture's size), `{key}.seg.png` (class per pixel) and `{key}.inst.png`
(instance per pixel), so every recipe trains on it by changing `data.*` only.

Splits: train, val, test, and test_compositional, whose scenes each hold at least one
(colour, shape) pair that no other split ever shows (world.compositional_holdout). A shard's
samples depend only on (seed, split, shard index), so shards are written by several
processes at once, the same seed gives the same bytes, and a second run keeps each shard its
split's manifest lists intact (data/shard_manifest.py) and writes the rest.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image

from vqct.data.decode import encode_image
from vqct.data.scenes.language import captions, questions
from vqct.data.scenes.render import CLASS_NAMES, render
from vqct.data.scenes.world import COLOURS, PATTERNS, RELATIONS, SHAPES, SIZES, compositional_holdout, sample_scene
from vqct.data.shard_manifest import kept_shards, shard_entry
from vqct.errors import UserError
from vqct.files import atomic_write_text

SPLITS = ("train", "val", "test", "test_compositional")
IMAGE_SIZES = (64, 128, 256)
FORMAT_VERSION = 1  # bump when the same settings would write other bytes


@dataclass(frozen=True)
class ScenesSettings:
    train: int = 10000
    val: int = 500
    test: int = 500
    test_compositional: int = 500
    image_size: int = 64
    samples_per_shard: int = 1000
    seed: int = 0

    def check(self) -> None:
        if self.image_size not in IMAGE_SIZES:
            raise UserError(f"--image-size {self.image_size}: give one of {', '.join(map(str, IMAGE_SIZES))}")
        if self.samples_per_shard <= 0 or self.train <= 0:
            raise UserError("--samples-per-shard and --num-samples must be positive numbers")
        if min(self.val, self.test, self.test_compositional) < 0:
            raise UserError("--val, --test and --test-compositional must be 0 or more")

    def count(self, split: str) -> int:
        return getattr(self, split)


def make_sample(rng: random.Random, holdout: set, compositional: bool, image_size: int) -> dict:
    """One scene as the members of a sample (bytes and text), from RNG."""
    graph = sample_scene(rng, holdout, compositional)
    picture, classes, instances = render(graph, image_size)
    meta = {"scene": graph.to_json(), "questions": questions(graph, rng), "width": image_size, "height": image_size}
    return {"jpg": encode_image(picture), "txt": "\n".join(captions(graph, rng)), "json": json.dumps(meta),
            "seg.png": encode_image(Image.fromarray(classes), "png"),
            "inst.png": encode_image(Image.fromarray(instances), "png")}


def write_shard(path: str, split: str, shard: int, first: int, count: int, settings: ScenesSettings) -> dict:
    """Write shard SHARD of SPLIT (samples FIRST .. FIRST + COUNT - 1) to a temporary name, then
    rename it; returns its manifest entry."""
    import webdataset as wds

    rng = random.Random(f"{settings.seed}-{split}-{shard}")
    holdout = compositional_holdout(settings.seed)
    tmp = Path(path).with_name(f".{Path(path).name}.tmp")
    with wds.TarWriter(str(tmp), mtime=0.0) as sink:  # a fixed mtime: the same seed, the same bytes
        for index in range(first, first + count):
            sample = make_sample(rng, holdout, split == "test_compositional", settings.image_size)
            sink.write({"__key__": f"{split}{index:08d}", **sample})
    os.replace(tmp, path)
    return shard_entry(Path(path), count)


def plan(settings: ScenesSettings, split: str) -> str:
    blob = json.dumps({"format": FORMAT_VERSION, "split": split, **asdict(settings)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def write_scenes(out: str | Path, settings: ScenesSettings, workers: int = 2) -> dict:
    """Every split under OUT/<split>/, resuming where a run with the same settings stopped."""
    from tqdm import tqdm

    settings.check()
    out = Path(out)
    jobs, kept, names = [], {}, {}
    for split in SPLITS:
        directory = out / split
        directory.mkdir(parents=True, exist_ok=True)
        total, per = settings.count(split), settings.samples_per_shard
        names[split] = [f"scenes-{i:06d}.tar" for i in range(-(-total // per))]
        kept[split] = kept_shards(directory, plan(settings, split))
        for i, name in enumerate(names[split]):
            if name not in kept[split]:
                jobs.append((str(directory / name), split, i, i * per, min(per, total - i * per)))
    entries = {split: dict(kept[split]) for split in SPLITS}
    with tqdm(total=sum(settings.count(s) for s in SPLITS), desc="scenes", unit="img", file=sys.stderr,
              mininterval=1.0) as bar, ProcessPoolExecutor(max(1, workers)) as pool:
        bar.update(sum(e["samples"] for split in SPLITS for e in kept[split].values()))
        futures = {pool.submit(write_shard, *job, settings): job for job in jobs}
        for future in as_completed(futures):
            path, split = futures[future][:2]
            entries[split][Path(path).name] = future.result()
            bar.update(futures[future][4])
            _write_manifest(out / split, split, settings, names[split], entries[split])  # resumable from here
    manifests = {split: _write_manifest(out / split, split, settings, names[split], entries[split])
                 for split in SPLITS}
    summary = {"out": str(out), "image_size": settings.image_size, "seed": settings.seed,
               "samples": {s: m["samples"] for s, m in manifests.items()},
               "shards": {s: len(m["shards"]) for s, m in manifests.items()},
               "shards_kept": {s: len(kept[s]) for s in SPLITS}}
    atomic_write_text(out / "manifest.json", json.dumps({**summary, "vocabulary": vocabulary(settings.seed)},
                                                        indent=1))
    return summary


def _write_manifest(directory: Path, split: str, settings: ScenesSettings, names: list[str], entries: dict) -> dict:
    shards = [entries[n] for n in names if n in entries]
    manifest = {"split": split, "plan": plan(settings, split), "settings": asdict(settings),
                "complete": len(shards) == len(names), "samples": sum(e["samples"] for e in shards),
                "shards": shards}
    atomic_write_text(directory / "manifest.json", json.dumps(manifest, indent=1))
    return manifest


def vocabulary(seed: int) -> dict:
    """What the world can show and say, for readers of the set (and the segmentation's class ids)."""
    return {"shapes": list(SHAPES), "colours": list(COLOURS), "sizes": list(SIZES), "patterns": list(PATTERNS),
            "relations": list(RELATIONS), "classes": list(CLASS_NAMES),
            "compositional_holdout": sorted(map(list, compositional_holdout(seed)))}
