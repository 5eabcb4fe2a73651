"""`vqct data tokenize TOKENIZER SHARDS --out DIR`: image shards -> code shards, one Ray task
per shard, resumable. DIR may be s3://BUCKET/PREFIX: each task then loads the set's tokenizer
from the store and uploads its shard there, so the tasks' nodes need no disk in common.

The manifest is rewritten after every finished shard with the plan (the tokenizer's digest and
the source shards) that made it: a second run with the same plan keeps every shard that is
still intact and tokenizes the rest; a run with another tokenizer into the same directory
starts over rather than mixing codes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sys
from pathlib import Path

from vqct.data.shard_manifest import kept_shards
from vqct.data.shards import resolve_shards
from vqct.errors import UserError
from vqct.files import atomic_write_text
from vqct.launch.shard_tasks import run_shard_tasks
from vqct.records.code_manifest import FORMAT, MANIFEST, TOKENIZER_DIR, tokenizer_identity
from vqct.records.storage import SCHEME, is_remote, local_copy, mirror_root, run_storage


def _tokenize_one(directory: str, url: str, out: str, batch_size: int) -> dict:
    """One Ray task: load the set's tokenizer directory and write one code shard (on an
    object store: through this process's own mirror, then uploaded)."""
    import torch

    from vqct.stage2.code_shards import tokenize_shard
    from vqct.tokenizer.pretrained import from_pretrained

    torch.set_num_threads(1)  # one CPU per task, as the task asks of Ray
    # A mirror of this task's own (a Ray worker process runs one task at a time; the host's
    # name keeps two nodes apart on a scratch they share), removed when the task ends.
    mirror = f"task-{socket.gethostname()}-{os.getpid()}"
    try:
        model, cfg = from_pretrained(local_copy(directory, mirror))
        if not is_remote(out):
            return tokenize_shard(model, cfg.data.image_size, url, Path(out), batch_size)
        storage, name = run_storage(out, mirror)
        (storage.local / name).parent.mkdir(parents=True, exist_ok=True)
        entry = tokenize_shard(model, cfg.data.image_size, url, storage.local / name, batch_size)
        storage.push(name)
        return entry
    finally:
        shutil.rmtree(mirror_root() / mirror, ignore_errors=True)


class _Output:
    """Where the code set goes: a directory, or s3://BUCKET/PREFIX through the local mirror
    (self.dir), each file pushed to the store once written."""

    def __init__(self, out: str):
        self.storage, self.name = run_storage(out) if is_remote(out) else (None, "")
        self.dir = self.storage.local / self.name if self.storage else Path(out)
        self.where = out.rstrip("/") if self.storage else str(self.dir)

    def place(self, rel: str) -> str:
        """REL as a task writes or reads it: in the store when there is one."""
        return self.storage.uri(f"{self.name}/{rel}") if self.storage else str(self.dir / rel)

    def push(self, rel: str) -> None:
        if self.storage:
            self.storage.push(f"{self.name}/{rel}")

    def kept(self, plan: str) -> dict[str, dict]:
        """The shards a run of PLAN keeps; in an object store, each listed in the manifest and
        there at its size (an object is written whole or not at all; none is downloaded)."""
        if not self.storage:
            return kept_shards(self.dir, plan)
        self.storage.pull(f"{self.name}/{MANIFEST}")
        sizes = self.storage.file_sizes(self.name)
        return kept_shards(self.dir, plan, lambda entry: sizes.get(entry["name"]) == entry["bytes"])


def _plan(digest: str, urls: list[str]) -> str:
    return hashlib.sha256(json.dumps({"format": FORMAT, "tokenizer": digest, "sources": urls}).encode()).hexdigest()


def tokenize_to_shards(target: str, data, out: str, batch_size: int = 64, tracking_uri: str | None = None) -> dict:
    from vqct.stage2.code_shards import code_layout, weights_digest
    from vqct.tokenizer.load import load_tokenizer
    from vqct.tokenizer.pretrained import from_pretrained, save_pretrained
    from vqct.tracking.targets import resolve_tokenizer

    if batch_size < 1:
        raise UserError(f"--batch-size={batch_size} must be at least 1")
    if is_remote(out) and "/" not in out[len(SCHEME):].strip("/"):
        raise UserError(f"--out {out}: give s3://BUCKET/PREFIX, a prefix under the bucket for the code set")
    resolved = resolve_tokenizer(target, tracking_uri)
    urls = resolve_shards(data, "SHARDS")
    output = _Output(out)
    output.dir.mkdir(parents=True, exist_ok=True)
    # The set carries its tokenizer (what decodes generated codes), and the tasks load that
    # copy: no ZeRO consolidation per task, and the digest is the same whichever form the
    # target took (a checkpoint and its export give equal weights here).
    model, cfg = load_tokenizer(resolved.path(heads=False), heads=False)
    model, cfg = from_pretrained(save_pretrained(model, cfg, output.dir / TOKENIZER_DIR))
    output.push(TOKENIZER_DIR)
    digest, layout = weights_digest(model), code_layout(model, cfg)
    plan = _plan(digest, urls)
    kept = output.kept(plan)
    names = [f"codes-{i:06d}.tar" for i in range(len(urls))]
    manifest = {"format": FORMAT, "plan": plan, "complete": False,
                "tokenizer": tokenizer_identity(digest, target, cfg.recipe, cfg.quantizer.name, layout.as_dict(),
                                                cfg.data.image_size, resolved.run_id, resolved.model_uri),
                "shards": [kept[n] for n in names if n in kept]}
    todo = [(url, name) for url, name in zip(urls, names) if name not in kept]
    if kept:
        print(f"resuming: {len(kept)} of {len(urls)} code shards already written", file=sys.stderr)
    if todo:
        run_shard_tasks(_tokenize_one, [(output.place(TOKENIZER_DIR), url, output.place(name), batch_size)
                                        for url, name in todo],
                        output.dir / MANIFEST, manifest, "tokenize", lambda: output.push(MANIFEST))
    manifest["shards"].sort(key=lambda e: e["name"])
    manifest["complete"] = True
    atomic_write_text(output.dir / MANIFEST, json.dumps(manifest, indent=1))
    output.push(MANIFEST)
    skipped: dict[str, int] = {}
    for entry in manifest["shards"]:
        for kind, n in entry.get("skipped", {}).items():
            skipped[kind] = skipped.get(kind, 0) + n
    return {"out": output.where, "shards": len(manifest["shards"]), "tokenized": len(todo),
            "samples": sum(e["samples"] for e in manifest["shards"]), "skipped": skipped,
            "tokenizer": manifest["tokenizer"]["digest"][:12], "layout": layout.as_dict()}
