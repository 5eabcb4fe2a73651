"""`vqct tokenize`: each image's code indices, for the stages that model token sequences.

Writes `tokens-NNNNNN.safetensors` files (tensor `indices`: (n, h, w) for vq, (n, h, w, k+1)
for vqct: k adjective indices then the noun index) with a `tokens-NNNNNN.json` list of the
samples' keys in the same order.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from vqct.data.loader import ImageCaptionStream, Loader
from vqct.data.shards import resolve_shards
from vqct.tokenizer.load import load_tokenizer


def export_tokens(checkpoint: str, data, out: str, batch_size: int = 64, per_file: int = 10000) -> dict:
    from tqdm import tqdm

    model, cfg = load_tokenizer(checkpoint, heads=False)  # tokens need no text model
    urls = resolve_shards(data, "--data")
    stream = ImageCaptionStream(urls, image_size=cfg.data.image_size, shuffle_buffer=0, epochs=1)
    loader = Loader(stream, batch_size=batch_size, num_workers=0)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    chunks, keys, files, total = [], [], [], 0

    def flush():
        if not keys:
            return
        name = f"tokens-{len(files):06d}"
        save_file({"indices": torch.cat(chunks).to(torch.int32).contiguous()}, str(out_dir / f"{name}.safetensors"))
        (out_dir / f"{name}.json").write_text(json.dumps(keys))
        files.append(name)
        chunks.clear()
        keys.clear()

    with torch.no_grad(), tqdm(desc="tokenize", unit="img", file=sys.stderr, mininterval=2.0) as bar:
        for batch in loader:
            chunks.append(model.tokenize(batch.images).cpu())
            keys.extend(batch.keys)
            total += len(batch.keys)
            bar.update(len(batch.keys))
            if len(keys) >= per_file:
                flush()
        flush()
    return {"images": total, "files": len(files), "out": str(out_dir), "recipe": cfg.recipe,
            "quantizer": cfg.quantizer.name, "skipped": loader.skipped}
