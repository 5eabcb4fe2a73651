"""`vqct generate TARGET --conditions CODES --out-shards DIR`: one generated image per held-out
condition, one Ray task per condition shard, resumable like `vqct data tokenize`.

The generator is exported once into DIR/generator/ (stage2/pretrained.py) and every task loads
that copy. Each shard's samples draw from a seed of their own (the run's seed and the shard's
index), so the images do not depend on which worker ran which shard or in what order.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from vqct.data.shard_manifest import kept_shards
from vqct.errors import UserError
from vqct.files import atomic_write_text, sha256_file
from vqct.launch.shard_tasks import run_shard_tasks
from vqct.records.code_manifest import MANIFEST, read_code_manifest

FORMAT = "vqct-samples/1"
GENERATOR_DIR = "generator"


def _sample_one(generator_dir: str, url: str, out: str, sampling: dict, seed: int, complete: bool,
                batch_size: int) -> dict:
    """One Ray task: load the exported generator and write one shard of samples."""
    import torch

    from vqct.stage2.pretrained import from_pretrained_generator
    from vqct.stage2.sample_shards import sample_shard
    from vqct.stage2.sampling import SamplingConfig

    torch.set_num_threads(1)
    gen, tokenizer = from_pretrained_generator(generator_dir)
    return sample_shard(gen, tokenizer, url, Path(out), SamplingConfig(**sampling), seed, complete, batch_size)


def sample_to_shards(target: str, conditions: str, out: str, sampling, seed: int = 0, complete: bool = False,
                     batch_size: int = 32) -> dict:
    from vqct.data.shards import resolve_shards
    from vqct.stage2.pretrained import CONFIG_FILE, WEIGHTS_FILE, export_generator, is_generator_dir

    manifest_in = read_code_manifest(conditions)
    urls = resolve_shards(conditions, "--conditions")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    # exported once (or given as a directory): its config.json names the code set, so the
    # generator is not loaded here only to read that
    generator_dir = Path(target) if is_generator_dir(Path(target)) else export_generator(target, out_dir / GENERATOR_DIR)
    code_set = json.loads((generator_dir / CONFIG_FILE).read_text())["code_set"]
    if manifest_in["tokenizer"]["digest"] != code_set["digest"]:
        raise UserError(f"--conditions {conditions} holds codes of tokenizer {manifest_in['tokenizer']['target']}, "
                        "not the one this generator was trained on: tokenize the held-out split with that tokenizer")
    settings = {"temperature": sampling.temperature, "top_k": sampling.top_k, "top_p": sampling.top_p,
                "cfg_scale": sampling.cfg_scale, "use_cache": sampling.use_cache}
    if sampling.null_condition:  # only when set, so that the plans of earlier runs stay the same
        settings["null_condition"] = True
    if sampling.caption_line:
        settings["caption_line"] = sampling.caption_line
    plan = hashlib.sha256(json.dumps({"format": FORMAT, "generator": sha256_file(generator_dir / WEIGHTS_FILE),
                                      "sampling": settings, "seed": seed, "complete": complete,
                                      "sources": urls}).encode()).hexdigest()
    kept = kept_shards(out_dir, plan)
    names = [f"samples-{i:06d}.tar" for i in range(len(urls))]
    manifest = {"format": FORMAT, "plan": plan, "complete": False, "generator": str(target), "sampling": settings,
                "seed": seed, "completion": complete, "conditions": str(conditions),
                "shards": [kept[n] for n in names if n in kept]}
    todo = [(i, url, name) for i, (url, name) in enumerate(zip(urls, names)) if name not in kept]
    if kept:
        print(f"resuming: {len(kept)} of {len(urls)} sample shards already written", file=sys.stderr)
    if todo:
        run_shard_tasks(_sample_one, [(str(generator_dir), url, str(out_dir / name), settings,
                                       seed * 1_000_003 + i * 7919, complete, batch_size) for i, url, name in todo],
                        out_dir / MANIFEST, manifest, "sample")
    manifest["shards"].sort(key=lambda e: e["name"])
    manifest["complete"] = True
    atomic_write_text(out_dir / MANIFEST, json.dumps(manifest, indent=1))
    return {"out": str(out_dir), "shards": len(manifest["shards"]), "sampled": len(todo),
            "samples": sum(e["samples"] for e in manifest["shards"]), "completion": complete}
