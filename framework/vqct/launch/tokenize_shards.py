"""`vqct data tokenize TOKENIZER SHARDS --out DIR`: image shards -> code shards, one Ray task
per shard, resumable.

The manifest is rewritten after every finished shard with the plan (the tokenizer's digest and
the source shards) that made it: a second run with the same plan keeps every shard that is
still intact and tokenizes the rest; a run with another tokenizer into the same directory
starts over rather than mixing codes.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from vqct.data.shard_manifest import kept_shards
from vqct.data.shards import resolve_shards
from vqct.errors import UserError
from vqct.files import atomic_write_text
from vqct.launch.shard_tasks import run_shard_tasks
from vqct.records.code_manifest import FORMAT, MANIFEST, TOKENIZER_DIR, tokenizer_identity


def _tokenize_one(directory: str, url: str, out: str, batch_size: int) -> dict:
    """One Ray task: load the set's tokenizer directory and write one code shard."""
    import torch

    from vqct.stage2.code_shards import tokenize_shard
    from vqct.tokenizer.pretrained import from_pretrained

    torch.set_num_threads(1)  # one CPU per task, as the task asks of Ray
    model, cfg = from_pretrained(directory)
    return tokenize_shard(model, cfg.data.image_size, url, Path(out), batch_size)


def _plan(digest: str, urls: list[str]) -> str:
    return hashlib.sha256(json.dumps({"format": FORMAT, "tokenizer": digest, "sources": urls}).encode()).hexdigest()


def tokenize_to_shards(target: str, data, out: str, batch_size: int = 64, tracking_uri: str | None = None) -> dict:
    from vqct.stage2.code_shards import code_layout, weights_digest
    from vqct.tokenizer.load import load_tokenizer
    from vqct.tokenizer.pretrained import from_pretrained, save_pretrained
    from vqct.tracking.targets import resolve_tokenizer

    if batch_size < 1:
        raise UserError(f"--batch-size={batch_size} must be at least 1")
    resolved = resolve_tokenizer(target, tracking_uri)
    urls = resolve_shards(data, "SHARDS")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    # The set carries its tokenizer (what decodes generated codes), and the tasks load that
    # copy: no ZeRO consolidation per task, and the digest is the same whichever form the
    # target took (a checkpoint and its export give equal weights here).
    model, cfg = load_tokenizer(resolved.path(heads=False), heads=False)
    directory = save_pretrained(model, cfg, out_dir / TOKENIZER_DIR)
    model, cfg = from_pretrained(directory)
    digest, layout = weights_digest(model), code_layout(model, cfg)
    plan = _plan(digest, urls)
    kept = kept_shards(out_dir, plan)
    names = [f"codes-{i:06d}.tar" for i in range(len(urls))]
    manifest = {"format": FORMAT, "plan": plan, "complete": False,
                "tokenizer": tokenizer_identity(digest, target, cfg.recipe, cfg.quantizer.name, layout.as_dict(),
                                                cfg.data.image_size, resolved.run_id, resolved.model_uri),
                "shards": [kept[n] for n in names if n in kept]}
    todo = [(url, name) for url, name in zip(urls, names) if name not in kept]
    if kept:
        print(f"resuming: {len(kept)} of {len(urls)} code shards already written", file=sys.stderr)
    if todo:
        run_shard_tasks(_tokenize_one, [(str(directory), url, str(out_dir / name), batch_size) for url, name in todo],
                        out_dir / MANIFEST, manifest, "tokenize")
    manifest["shards"].sort(key=lambda e: e["name"])
    manifest["complete"] = True
    atomic_write_text(out_dir / MANIFEST, json.dumps(manifest, indent=1))
    skipped: dict[str, int] = {}
    for entry in manifest["shards"]:
        for kind, n in entry.get("skipped", {}).items():
            skipped[kind] = skipped.get(kind, 0) + n
    return {"out": str(out_dir), "shards": len(manifest["shards"]), "tokenized": len(todo),
            "samples": sum(e["samples"] for e in manifest["shards"]), "skipped": skipped,
            "tokenizer": manifest["tokenizer"]["digest"][:12], "layout": layout.as_dict()}
