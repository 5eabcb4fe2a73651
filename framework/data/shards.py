"""Turn a user's shard specification into a list of URLs webdataset can open.

Accepted: a directory (its *.tar files), a brace pattern (`shards-{000000..000099}.tar`),
a glob, a single file, a list of any of these, and the remote URLs webdataset opens
itself (`pipe:...`, `http(s)://`, `s3://` through pipe). Local paths are checked here so
that a wrong path fails at start, not inside a worker.
"""

from __future__ import annotations

import glob
import os
import sys
from pathlib import Path
from typing import Any

from braceexpand import braceexpand

from vqct.errors import UserError

_SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")


def is_remote(url: str) -> bool:
    return url.startswith("pipe:") or "://" in url and not url.startswith("file://")


def _expand_one(spec: str) -> list[str]:
    spec = os.path.expanduser(spec.removeprefix("file://"))
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


def check_reader_count(urls: list[str], ranks: int, workers_per_rank: int, what: str) -> None:
    """webdataset gives a reader with no shard nothing to read: refuse that at start."""
    readers = ranks * max(1, workers_per_rank)
    if len(urls) < readers:
        raise UserError(
            f"{what}: {len(urls)} shards for {readers} readers "
            f"(trainer.num_workers={ranks} x data.num_workers={max(1, workers_per_rank)}): "
            "write more, smaller shards (vqct data shapes --samples-per-shard) or lower "
            "trainer.num_workers / data.num_workers"
        )
