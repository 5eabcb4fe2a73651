"""`vqct downstream truth`: a code set whose codes are the scenes' ground truth, the ceiling row
of the downstream table (what a downstream model of the same size and steps gets from codes that
say exactly what is where).

Each grid cell holds four codes, the shape, colour, pattern and size of the object covering most
of the cell's pixels (0 for background), one column each. Factorised on purpose: one code per
(shape, colour, pattern, size) combination would give 1,200 codes, most seen a few times in a
training set, and a downstream model with a learned table (features=indices, the only features a
set without a tokenizer has) would have to learn that 1,200 rows share ten colours; it stalled
at the answers' priors on VQA that way (docs/results.md).
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vqct.data.code_loader import grid_classes
from vqct.data.decode import BadSample
from vqct.data.scenes.truth import raw_samples
from vqct.data.scenes.world import COLOURS, PATTERNS, SHAPES, SIZES
from vqct.data.shards import resolve_shards
from vqct.errors import UserError
from vqct.files import atomic_write_text
from vqct.records.code_manifest import CODES_EXT, FORMAT, MANIFEST, tokenizer_identity

TRUTH = "truth"  # the identity's target and recipe: no tokenizer made these codes
# (column name, values): value 0 is background, 1 + i the i-th name
COLUMNS = (("shape", SHAPES), ("colour", tuple(COLOURS)), ("pattern", PATTERNS), ("size", tuple(SIZES)))


def truth_layout(grid: int) -> dict:
    return {"groups": [[name, 1 + len(values), 1] for name, values in COLUMNS], "height": grid, "width": grid}


def truth_identity(grid: int, image_size: int) -> dict:
    # every truth set of one grid and size is "the same tokenizer": train and test sets pair up
    digest = hashlib.sha256(f"vqct-truth-codes/1 grid={grid} size={image_size}".encode()).hexdigest()
    return tokenizer_identity(digest, TRUTH, TRUTH, TRUTH, truth_layout(grid), image_size)


def cell_objects(instances: np.ndarray, grid: int) -> np.ndarray:
    """(grid, grid) instance id (0 background, 1 + object index) covering most of each cell; ties
    go to the lower id (background, then the object listed first), as a generator's class map does."""
    try:
        return grid_classes(instances, grid, int(instances.max()) + 1).numpy()
    except BadSample:
        raise UserError(f"instance map {instances.shape} is not square or not a multiple of grid={grid}; "
                        "give a grid that divides the image size") from None


def truth_grid(sample: dict, grid: int) -> tuple[np.ndarray, int]:
    """(grid, grid, 4) int32 codes of one scenes sample (needs its inst.png and json), and the
    sample's image size."""
    from PIL import Image

    instances = np.asarray(Image.open(io.BytesIO(sample["inst.png"])), dtype=np.int64)
    objects = json.loads(sample["json"])["scene"]["objects"]
    table = np.zeros((1 + len(objects), len(COLUMNS)), np.int32)
    for row, obj in enumerate(objects, start=1):
        table[row] = [1 + values.index(obj[name]) for name, values in COLUMNS]
    return table[cell_objects(instances, grid)], instances.shape[0]


def write_truth_codes(shards: list[str], out: str | Path, grid: int = 16) -> dict:
    """Truth codes of every scenes sample of SHARDS, as a code set at OUT (one shard per input shard)."""
    import webdataset as wds

    urls = resolve_shards(shards, "SHARDS")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    entries, image_size, skipped = [], None, 0
    for number, url in enumerate(tqdm(urls, desc="truth codes", unit="shard")):
        name, count = f"codes-{number:06d}.tar", 0
        with wds.TarWriter(str(out / name)) as sink:
            for sample in raw_samples([url]):
                if "inst.png" not in sample or "json" not in sample:
                    skipped += 1
                    continue
                codes, image_size = truth_grid(sample, grid)
                buffer = io.BytesIO()
                np.save(buffer, codes)
                sink.write({"__key__": sample["__key__"], CODES_EXT: buffer.getvalue(), "txt": sample.get("txt", b""),
                            "json": sample["json"]})
                count += 1
        entries.append({"name": name, "samples": count})
    if image_size is None:
        raise UserError(f"{', '.join(shards)}: no sample carries the scenes' ground truth (inst.png, json); "
                        "make scenes with `vqct data scenes`")
    manifest = {"format": FORMAT, "complete": True, "tokenizer": truth_identity(grid, image_size), "shards": entries}
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1))
    return {"out": str(out), "shards": len(entries), "samples": sum(e["samples"] for e in entries),
            "skipped_without_truth": skipped, "grid": grid}
