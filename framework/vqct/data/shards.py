"""Turn a user's shard specification into a list of URLs webdataset can open.

Accepted: a directory (its *.tar files), a brace pattern (`shards-{000000..000099}.tar`),
a glob, a single file, a list of any of these, the remote URLs webdataset opens itself
(`pipe:...`, `http(s)://`), and `s3://BUCKET/PREFIX` (a prefix: its .tar objects; or a brace
pattern), read through the object store of records/storage.py. Local paths are checked here so
that a wrong path fails at start, not inside a worker.
"""

from __future__ import annotations

import glob
import json
import os
import sys
from pathlib import Path
from typing import Any

from braceexpand import braceexpand

from vqct.errors import UserError
from vqct.records.storage import SCHEME, s3_filesystem

_SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")


def _s3_prefix(spec: str) -> list[str]:
    """s3://BUCKET/PREFIX -> the shard objects under it, sorted."""
    from pyarrow import fs

    found = s3_filesystem().get_file_info(fs.FileSelector(spec[len(SCHEME):].rstrip("/"), allow_not_found=True))
    return sorted(SCHEME + i.path for i in found if i.type == fs.FileType.File and i.path.endswith(_SHARD_SUFFIXES))


def is_remote(url: str) -> bool:
    return url.startswith("pipe:") or "://" in url and not url.startswith("file://")


def _expand_one(spec: str) -> list[str]:
    spec = os.path.expanduser(spec.removeprefix("file://"))
    if spec.startswith(SCHEME) and not spec.endswith(_SHARD_SUFFIXES) and "{" not in spec:
        return _s3_prefix(spec)
    if is_remote(spec):
        return list(braceexpand(spec))
    # Absolute paths: Ray workers run in a directory of their own, not the driver's.
    path = Path(spec).resolve()
    if path.is_dir():
        return sorted(str(p) for p in path.iterdir() if p.name.endswith(_SHARD_SUFFIXES))
    urls: list[str] = []
    for name in braceexpand(str(Path(spec).absolute())):
        urls.extend(sorted(glob.glob(name)) if glob.has_magic(name) else [name])
    return urls


def resolve_shards(spec: Any, what: str = "data.train_shards", missing_out: list | None = None) -> list[str]:
    """Expand SPEC to shard URLs; fail with one clear line when no shard is there. Local
    shards that are listed but absent are dropped with a warning (and added to MISSING_OUT)."""
    specs = [spec] if isinstance(spec, str) else list(spec or [])
    urls = [url for s in specs for url in _expand_one(str(s))]
    local = [u for u in urls if not is_remote(u)]
    missing = [u for u in local if not os.path.isfile(u)]
    if not urls or (local and len(missing) == len(local) and len(local) == len(urls)):
        raise UserError(
            f"{what}: no shards found at '{spec}': point it at a directory of .tar shards, "
            "a brace pattern such as shards-{000000..000009}.tar, or a list of URLs "
            "(make shapes shards with: vqct data shapes --out data/shapes)"
        )
    if missing:
        print(f"warning: {what}: {len(missing)} of {len(urls)} shards are missing and are "
              f"skipped (first: {missing[0]})", file=sys.stderr)
        absent = set(missing)
        if missing_out is not None:
            missing_out.extend(missing)
        urls = [u for u in urls if u not in absent]
    return urls


def check_reader_count(urls: list[str], ranks: int, workers_per_rank: int, what: str) -> bool:
    """Fewer shards than readers: every reader then reads every shard and keeps its share of the
    samples (data/loader.py), which multiplies the reading; say so. True when that is the case."""
    readers = ranks * max(1, workers_per_rank)
    if len(urls) >= readers:
        return False
    print(f"note: {what}: {len(urls)} shards for {readers} readers (trainer.num_workers={ranks} x "
          f"data.num_workers={max(1, workers_per_rank)}): each reader reads every shard and keeps one "
          f"sample in {readers}; more, smaller shards read faster", file=sys.stderr)
    return True


def _manifest_counts(directory: Path) -> dict[str, int]:
    """Per-shard sample counts a vqct manifest (vqct data pack) gives for DIRECTORY's shards."""
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
        return {str(directory / e["name"]): int(e["samples"]) for e in manifest.get("shards", [])}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _img2dataset_count(url: str) -> int | None:
    """img2dataset writes NNNNN_stats.json beside NNNNN.tar; 'successes' is its sample count."""
    stats = Path(url[: -len(".tar")] + "_stats.json") if url.endswith(".tar") else None
    try:
        return int(json.loads(stats.read_text())["successes"]) if stats else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def known_counts(urls: list[str]) -> dict[str, int]:
    """Sample counts of the local shards whose count a manifest or img2dataset's stats give."""
    counts: dict[str, int] = {}
    for directory in {Path(u).parent for u in urls if not is_remote(u)}:
        counts.update(_manifest_counts(directory))
    for url in urls:
        if url not in counts and not is_remote(url):
            found = _img2dataset_count(url)
            if found is not None:
                counts[url] = found
    return {u: counts[u] for u in urls if u in counts}


def drop_empty(urls: list[str], what: str) -> tuple[list[str], list[str]]:
    """Pass over the shards known to hold no sample (all-failed img2dataset slices), so that no
    reader is handed only empty ones. Returns (kept, empty); refuses a set that is all empty."""
    counts = known_counts(urls)
    empty = [u for u in urls if counts.get(u) == 0]
    kept = [u for u in urls if counts.get(u) != 0]
    if empty:
        print(f"note: {what}: {len(empty)} of {len(urls)} shards hold no sample and are passed over "
              f"(first: {empty[0]})", file=sys.stderr)
    if not kept:
        raise UserError(f"{what}: all {len(urls)} shards hold no sample (their manifest or img2dataset "
                        "stats say so): point it at shards with data")
    return kept, empty
