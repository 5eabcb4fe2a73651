"""One Ray task per shard, with the set's manifest rewritten after each finished shard: what
`vqct data tokenize` and `vqct generate --conditions` share (a killed run keeps every shard it
finished, and the next run with the same plan writes only the rest)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

from vqct.files import atomic_write_text
from vqct.launch.ray_connect import connect
from vqct.records.storage import store_env


def run_shard_tasks(task: Callable[..., dict], calls: list[tuple], manifest_path: Path, manifest: dict,
                    desc: str, after_write: Callable[[], None] | None = None) -> None:
    """TASK(*call) for each of CALLS on Ray (one CPU each); each result is appended to
    MANIFEST["shards"] and the manifest written, in the order the tasks finish, then
    AFTER_WRITE called (an object store's copy of the manifest updated)."""
    import ray
    from tqdm import tqdm

    connected = connect(1, {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", **store_env()})
    try:
        remote = ray.remote(num_cpus=1)(task)
        pending = [remote.remote(*call) for call in calls]
        with tqdm(total=len(pending), desc=desc, unit="shard", file=sys.stderr) as bar:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                manifest["shards"].append(ray.get(done[0]))
                atomic_write_text(manifest_path, json.dumps(manifest, indent=1))
                if after_write:
                    after_write()
                bar.update(1)
    finally:
        if connected:
            ray.shutdown()
