"""`vqct data pack`: a user's images and captions -> WebDataset shards in the img2dataset layout.

Each sample is `{key}.{jpg|png|webp}`, `{key}.txt` (its captions, one per line: the loader
picks one each time it reads the sample) and `{key}.json` (the source path, the image's
size as packed and as found, the caption count). Per split (`train/`, `val/`) a
`manifest.json` lists every shard with its sample count, size and sha256, and
`report.json` + `skipped.tsv` list what was passed over, by kind (unreadable image,
missing caption, missing image, duplicate): never a traceback.

The plan (which sample goes to which split, shard and key) depends only on the inputs and
the settings, so a second run with the same ones keeps every shard already written and
intact (its sha256 matches the manifest) and writes the rest: packing resumes. Shards are
written to a temporary name and renamed, by several processes at once.

Why by hand: img2dataset downloads URLs; here the images are local files in dataset
layouts (COCO, CUB) it does not read, and the split and resumption follow vqct's manifest.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

from vqct.data.pack_sources import Item
from vqct.data.shard_manifest import intact, read_manifest, shard_entry
from vqct.errors import UserError
from vqct.files import atomic_write_text, sha256_file

FORMATS = ("jpg", "png", "webp", "keep")
SPLITS = ("train", "val")
SKIP_KINDS = ("unreadable_image", "missing_image", "missing_caption", "duplicate")


@dataclass(frozen=True)
class PackSettings:
    val_fraction: float = 0.05  # by seed, when the dataset gives no split of its own
    seed: int = 0
    split: str = "auto"  # auto (the dataset's own split when it has one), seed, train, val
    samples_per_shard: int = 1000
    shard_bytes: int = 0  # > 0: a shard closes before its source files pass this many bytes
    resize: int = 0  # > 0: shorter side to this many pixels (then a centre crop with crop=True)
    crop: bool = False
    image_format: str = "jpg"  # jpg | png | webp | keep (the source bytes when not resized)
    quality: int = 95

    def check(self) -> None:
        if not 0 <= self.val_fraction < 1:
            raise UserError(f"--val-fraction {self.val_fraction} must be in [0, 1)")
        if self.split not in ("auto", "seed", *SPLITS):
            raise UserError(f"--split {self.split} must be auto, seed, train or val")
        if self.samples_per_shard <= 0 or self.shard_bytes < 0 or self.resize < 0:
            raise UserError("--samples-per-shard must be positive; --shard-bytes and --resize 0 or more")
        if self.crop and not self.resize:
            raise UserError("--center-crop needs --resize SIZE")
        if self.image_format not in FORMATS:
            raise UserError(f"--format {self.image_format} must be one of {', '.join(FORMATS)}")


@dataclass
class Skipped:
    """What was passed over, by kind, with one line each for skipped.tsv."""
    counts: dict = field(default_factory=lambda: dict.fromkeys(SKIP_KINDS, 0))
    lines: list = field(default_factory=list)

    def add(self, kind: str, source: str, detail: str = "") -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.lines.append(f"{kind}\t{source}\t{detail}")

    def merge(self, other: "Skipped") -> None:
        for kind, n in other.counts.items():
            self.counts[kind] = self.counts.get(kind, 0) + n
        self.lines.extend(other.lines)


# ---- planning ------------------------------------------------------------------------------
def _file_digest(path: str) -> tuple[str, str | None, int]:
    try:
        return path, sha256_file(Path(path)), os.path.getsize(path)
    except OSError:
        return path, None, 0


def deduplicate(items: list[Item], skipped: Skipped, workers: int) -> tuple[list[Item], dict[str, int]]:
    """Drop a second listing of the same file and a second file with the same bytes; a file
    that cannot be read is skipped here. Returns (kept items, source bytes per file)."""
    seen_paths: set[str] = set()
    unique = []
    for item in items:
        if item.source in seen_paths:
            skipped.add("duplicate", item.source, "listed again")
            continue
        seen_paths.add(item.source)
        unique.append(item)
    with ProcessPoolExecutor(max(1, workers)) as pool:
        digests = {p: (d, n) for p, d, n in pool.map(_file_digest, [i.source for i in unique], chunksize=64)}
    kept, first_of, sizes = [], {}, {}
    for item in unique:
        digest, size = digests[item.source]
        if digest is None:
            skipped.add("missing_image", item.source, "no such file, or not readable")
            continue
        if digest in first_of:
            skipped.add("duplicate", item.source, f"same bytes as {first_of[digest]}")
            continue
        first_of[digest] = item.source
        sizes[item.source] = size
        kept.append(item)
    return kept, sizes


def _in_val(name: str, seed: int, fraction: float) -> bool:
    """A split by hash of the dataset's own name for the image: stable whatever the order, the
    number of items or the directory the dataset sits in."""
    h = int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "big")
    return h / 2**64 < fraction


def assign_splits(items: list[Item], settings: PackSettings) -> dict[str, list[Item]]:
    own = settings.split == "auto" and any(item.split for item in items)
    splits: dict[str, list[Item]] = {name: [] for name in SPLITS}
    for item in sorted(items, key=lambda i: i.source):
        if settings.split in SPLITS:
            name = settings.split
        elif own:
            name = item.split or "train"
        else:
            name = "val" if _in_val(item.name or item.source, settings.seed, settings.val_fraction) else "train"
        splits[name].append(item)
    return splits


def plan_shards(items: list[Item], sizes: dict[str, int], settings: PackSettings) -> list[list[Item]]:
    shards, current, current_bytes = [], [], 0
    for item in items:
        size = sizes.get(item.source, 0)
        full = len(current) >= settings.samples_per_shard or (
            settings.shard_bytes and current and current_bytes + size > settings.shard_bytes)
        if full:
            shards.append(current)
            current, current_bytes = [], 0
        current.append(item)
        current_bytes += size
    if current:
        shards.append(current)
    return shards


def plan_digest(split: str, shards: list[list[Item]], settings: PackSettings) -> str:
    blob = json.dumps({"split": split, "settings": asdict(settings),
                       "shards": [[(i.source, list(i.captions)) for i in shard] for shard in shards]})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---- writing (in worker processes) ----------------------------------------------------------
def _encode(item: Item, settings: PackSettings) -> tuple[bytes, str, dict]:
    """(image bytes, extension, size info); raises on an unreadable image."""
    from PIL import Image

    from vqct.data.decode import encode_image, resize_crop, to_rgb

    raw = Path(item.source).read_bytes()
    image = Image.open(io.BytesIO(raw))
    image.load()
    found = list(image.size)
    source_ext = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}.get(image.format or "")
    if not settings.resize and settings.image_format == "keep" and source_ext:
        return raw, source_ext, {"width": found[0], "height": found[1], "original_size": found}
    image = to_rgb(image)
    if settings.resize:
        if settings.crop:
            image = resize_crop(image, settings.resize)
        else:
            scale = settings.resize / min(image.size)
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                 Image.BICUBIC, reducing_gap=3.0)
    ext = settings.image_format if settings.image_format != "keep" else "jpg"
    return encode_image(image, ext, settings.quality), ext, {"width": image.width, "height": image.height, "original_size": found}


def write_shard(path: str, first_key: int, items: list[Item], settings: PackSettings) -> dict:
    """Write one shard (to a temporary name, then renamed); returns its manifest entry and skips."""
    import webdataset as wds

    skipped = Skipped()
    tmp = Path(path).with_name(f".{Path(path).name}.tmp")
    written = 0
    with wds.TarWriter(str(tmp)) as sink:
        for offset, item in enumerate(items):
            try:
                data, ext, size = _encode(item, settings)
            except Exception as exc:  # PIL raises many kinds for a broken file
                skipped.add("unreadable_image", item.source, f"{type(exc).__name__}: {str(exc)[:160]}")
                continue
            key = f"{first_key + offset:09d}"
            meta = {"key": key, "source": item.source, **size, "captions": len(item.captions)}
            sink.write({"__key__": key, ext: data, "txt": "\n".join(item.captions),
                        "json": json.dumps(meta).encode()})
            written += 1
    os.replace(tmp, path)
    return {"entry": shard_entry(Path(path), written), "skipped": asdict(skipped)}


# ---- one split ------------------------------------------------------------------------------
def pack_split(out: Path, split: str, shards: list[list[Item]], settings: PackSettings, workers: int,
               skipped: Skipped, force: bool, bar) -> dict:
    directory = out / split
    directory.mkdir(parents=True, exist_ok=True)
    digest = plan_digest(split, shards, settings)
    previous = read_manifest(directory / "manifest.json")
    if previous and previous.get("plan") != digest and not force:
        raise UserError(f"{directory} was packed from other inputs or settings: pass --force to pack it "
                        "again from scratch, or choose another --out")
    done = {e["name"]: e for e in (previous or {}).get("shards", []) if previous.get("plan") == digest}
    names = [f"{split}-{i:06d}.tar" for i in range(len(shards))]
    entries: dict[str, dict] = {}
    kept_skips = (previous or {}).get("skipped_by_shard", {}) if done else {}
    skips_by_shard: dict[str, dict] = {}
    jobs = []
    for name, items, first in zip(names, shards, _first_keys(shards)):
        if name in done and intact(directory, done[name]):
            entries[name] = done[name]
            skips_by_shard[name] = kept_skips.get(name, asdict(Skipped()))
            bar.update(len(items))
        else:
            jobs.append((str(directory / name), first, items))
    with ProcessPoolExecutor(max(1, workers)) as pool:
        futures = {pool.submit(write_shard, path, first, items, settings): (path, items) for path, first, items in jobs}
        for future in as_completed(futures):
            path, items = futures[future]
            result = future.result()
            entries[Path(path).name] = result["entry"]
            skips_by_shard[Path(path).name] = result["skipped"]
            bar.update(len(items))
            _write_manifest(directory, split, digest, settings, names, entries, skips_by_shard,
                            len(names) - len(jobs))  # progress so far, for a resume
    for name in names:
        part = Skipped(**skips_by_shard.get(name, asdict(Skipped())))
        skipped.merge(part)
    return _write_manifest(directory, split, digest, settings, names, entries, skips_by_shard, len(names) - len(jobs))


def _first_keys(shards: list[list[Item]]) -> list[int]:
    firsts, total = [], 0
    for shard in shards:
        firsts.append(total)
        total += len(shard)
    return firsts


def _write_manifest(directory: Path, split: str, digest: str, settings: PackSettings, names: list[str],
                    entries: dict, skips: dict, kept: int = 0) -> dict:
    shards = [entries[n] for n in names if n in entries]
    manifest = {"split": split, "plan": digest, "settings": asdict(settings), "complete": len(shards) == len(names),
                "shards_kept": kept,
                "samples": sum(e["samples"] for e in shards), "shards": shards, "skipped_by_shard": skips}
    atomic_write_text(directory / "manifest.json", json.dumps(manifest, indent=1))
    return manifest


# ---- the command ----------------------------------------------------------------------------
def pack(items: Iterable[Item], out: str | Path, settings: PackSettings, workers: int = 2,
         force: bool = False, listing_skipped: Skipped | None = None) -> dict:
    """Pack ITEMS (from a pack_sources reader) into OUT/{train,val}/; returns the counts."""
    from tqdm import tqdm

    settings.check()
    out = Path(out)
    skipped = listing_skipped or Skipped()
    listed = list(items)
    if not listed:
        raise UserError(f"no image with a caption was found ({skipped.counts}): check the source paths")
    kept, sizes = deduplicate(listed, skipped, workers)
    splits = {name: plan_shards(members, sizes, settings) for name, members in assign_splits(kept, settings).items()}
    manifests = {}
    with tqdm(total=len(kept), desc="pack", unit="img", file=sys.stderr, mininterval=1.0) as bar:
        for split, shards in splits.items():
            if shards:
                manifests[split] = pack_split(out, split, shards, settings, workers, skipped, force, bar)
    out.mkdir(parents=True, exist_ok=True)
    report = {"listed": len(listed), "packed": {s: m["samples"] for s, m in manifests.items()},
              "shards": {s: len(m["shards"]) for s, m in manifests.items()},
              "shards_kept": {s: m["shards_kept"] for s, m in manifests.items()}, "skipped": skipped.counts}
    atomic_write_text(out / "report.json", json.dumps(report, indent=1))
    atomic_write_text(out / "skipped.tsv", "kind\tsource\tdetail\n" + "".join(f"{ln}\n" for ln in skipped.lines))
    return {"out": str(out), **report, "report": str(out / "report.json")}


def read_source(layout: str, args) -> tuple[list[Item], Skipped]:
    """The items of a source layout (pack_sources), and what listing it passed over."""
    from vqct.data import pack_sources as src

    skipped = Skipped()
    if layout == "folder":
        items = src.read_folder(Path(args.images), skipped.add)
    elif layout == "coco":
        items = src.read_coco(Path(args.annotations), Path(args.images), skipped.add)
    elif layout == "cub":
        items = src.read_cub(Path(args.images), Path(args.text), Path(args.split_dir) if args.split_dir else None,
                             skipped.add)
    elif layout == "table":
        items = src.read_table(Path(args.table), args.image_column, args.caption_column,
                               Path(args.images) if args.images else None, skipped.add)
    else:
        raise UserError(f"layout {layout}: must be one of {', '.join(src.LAYOUTS)}")
    return list(items), skipped
