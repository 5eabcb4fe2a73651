"""A split's `manifest.json`: every shard written, with its sample count, size and sha256, and
the digest of the plan that made it. A second run with the same plan keeps each shard that
is still intact and writes the rest: `vqct data pack` and `vqct data scenes` resume by it."""

from __future__ import annotations

import json
import os
from pathlib import Path

from vqct.files import sha256_file


def read_manifest(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def shard_entry(path: Path, samples: int) -> dict:
    return {"name": path.name, "samples": samples, "bytes": os.path.getsize(path), "sha256": sha256_file(path)}


def intact(directory: Path, entry: dict) -> bool:
    """Whether the shard ENTRY describes is in DIRECTORY as it was written."""
    path = directory / entry["name"]
    return path.is_file() and path.stat().st_size == entry["bytes"] and sha256_file(path) == entry["sha256"]


def kept_shards(directory: Path, plan: str, whole=None) -> dict[str, dict]:
    """The entries of DIRECTORY's manifest whose shards a run of PLAN can keep: those WHOLE(entry)
    says are there as written (default: intact in DIRECTORY, by size and sha256)."""
    previous = read_manifest(directory / "manifest.json") or {}
    if previous.get("plan") != plan:
        return {}
    whole = whole or (lambda entry: intact(directory, entry))
    return {e["name"]: e for e in previous.get("shards", []) if whole(e)}
