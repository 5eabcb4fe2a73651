"""One image shard -> one code shard: each sample's codes under a trained tokenizer, its
caption lines and the ground truth it carries, so that stage 2 trains without the image
encoder (LlamaGen's extract-once habit). `launch/tokenize_shards.py` spreads shards over Ray.

A code-shard sample: `codes.npy` (int32, (h, w, columns): the tokenizer's indices, VQCT's k
adjectives then the noun), `txt` as in the source, and every other field of the source sample
but the image (the scenes' `seg.png`, `inst.png` and `json`). A sample whose image cannot be
decoded is skipped and counted.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
import torch

from vqct.config.schema import Config
from vqct.data.decode import IMAGE_EXTS, BadSample, decode_image
from vqct.data.shard_manifest import shard_entry
from vqct.quantize import AdjNounQuantizer
from vqct.records.code_manifest import CODES_EXT
from vqct.stage2.generator import CodeLayout


def code_layout(model, cfg: Config) -> CodeLayout:
    """What a grid position of this tokenizer's codes holds (the generator's input layout)."""
    q, grid = model.quantizer, cfg.token_grid
    if isinstance(q, AdjNounQuantizer):
        return CodeLayout((("adj", q.num_adj, q.topk), ("noun", q.num_noun, 1)), grid, grid)
    return CodeLayout((("codes", q.codebook_size, 1),), grid, grid)


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 over the tokenizer's tensors in name order: two tokenizers with equal digests give
    equal codes (the identity a code-shard set pins)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name.startswith("align."):  # heads do not change the codes
            continue
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()


def as_columns(indices: torch.Tensor) -> torch.Tensor:
    """Tokenizer indices (B, h, w) or (B, h, w, k+1) -> (B, h, w, columns)."""
    return indices.unsqueeze(-1) if indices.dim() == 3 else indices


def _raw_samples(url: str, errors: dict):
    import webdataset as wds

    def tar_error(exn: Exception) -> bool:
        errors["tar_error"] = errors.get("tar_error", 0) + 1
        return True

    return wds.DataPipeline(wds.SimpleShardList([url]), wds.tarfile_to_samples(handler=tar_error))


def _encode_npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def tokenize_shard(model, image_size: int, url: str, out: Path, batch_size: int = 64) -> dict:
    """Write the code shard of URL to OUT (via a temporary name, so a killed run leaves no
    half shard); returns its manifest entry with the counts of skipped samples."""
    import webdataset as wds

    skipped: dict[str, int] = {}
    tmp = out.with_name(f".{out.name}.tmp")
    written = 0

    def flush(batch: list[tuple[dict, torch.Tensor]], sink) -> int:
        with torch.no_grad():
            codes = as_columns(model.tokenize(torch.stack([img for _, img in batch])))
        for (sample, _), grid in zip(batch, codes.to(torch.int32).cpu().numpy()):
            sink.write({**sample, CODES_EXT: _encode_npy(grid)})
        return len(batch)

    with wds.TarWriter(str(tmp), mtime=0.0) as sink:
        batch = []
        for sample in _raw_samples(url, skipped):
            ext = next((e for e in IMAGE_EXTS if e in sample), None)
            try:
                if ext is None:
                    raise BadSample("missing_image", "")
                image = decode_image(sample[ext], image_size)
            except BadSample as bad:
                skipped[bad.kind] = skipped.get(bad.kind, 0) + 1
                continue
            kept = {k: v for k, v in sample.items() if k not in IMAGE_EXTS and k != "__url__"}
            batch.append((kept, image))
            if len(batch) == batch_size:
                written += flush(batch, sink)
                batch = []
        if batch:
            written += flush(batch, sink)
    os.replace(tmp, out)
    return {**shard_entry(out, written), "source": url, "skipped": skipped}
