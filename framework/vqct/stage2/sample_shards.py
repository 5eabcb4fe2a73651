"""One code shard of conditions -> one shard of generated images, for evaluating a generator.

Each sample of the condition shard (a `vqct data tokenize` shard of held-out data) gets one
generated image, conditioned on a caption line (the first, or the sampling's caption_line) or
its segmentation (the generator's condition), or, with COMPLETE, continuing the top half of its
own codes. The output is in the
LAION layout the loader and `vqct eval` read: `jpg` (the generated image), `txt` (the caption
used), and the condition sample's ground truth (`json`, `seg.png`, `inst.png`) and real codes
(`real.codes.npy`), so the judges compare each sample with what it was asked for.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vqct.data.code_loader import SEGMENTATION_EXT
from vqct.data.decode import encode_image
from vqct.data.shard_manifest import shard_entry
from vqct.records.code_manifest import CODES_EXT
from vqct.stage2.generate import sample_images
from vqct.stage2.sampling import SamplingConfig

REAL_CODES_EXT = "real.codes.npy"


def _caption_line(raw: bytes, index: int) -> str:
    """Line INDEX of the caption (its first line where it has fewer)."""
    lines = [line.strip() for line in raw.decode("utf-8", errors="replace").splitlines() if line.strip()]
    return (lines[index] if index < len(lines) else lines[0]) if lines else ""


def _write(sink, samples: list[dict], images: torch.Tensor, captions: list[str]) -> None:
    pixels = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    for sample, pixel, caption in zip(samples, pixels, captions):
        kept = {k: v for k, v in sample.items() if k not in (CODES_EXT, "txt", "__url__")}
        sink.write({**kept, "jpg": encode_image(Image.fromarray(pixel)), "txt": caption.encode(),
                    REAL_CODES_EXT: sample[CODES_EXT]})


def _sample_batch(gen, tokenizer, samples: list[dict], sampling: SamplingConfig, seed: int, complete: bool):
    layout = gen.model.layout
    captions = [_caption_line(s.get("txt", b""), sampling.caption_line) for s in samples]
    cond_name = gen.config.condition.name
    real = torch.stack([torch.from_numpy(np.load(io.BytesIO(s[CODES_EXT])).astype(np.int64)) for s in samples])
    prefix = real[:, : layout.height // 2].reshape(len(samples), -1, layout.columns) if complete else None
    maps = (np.stack([np.asarray(Image.open(io.BytesIO(s[SEGMENTATION_EXT]))) for s in samples])
            if cond_name == "segmentation" else None)  # one class map per sample
    images = sample_images(gen, tokenizer, len(samples), captions if cond_name == "caption" else None, maps,
                           prefix=prefix, sampling=sampling, seed=seed)
    return images, captions


def sample_shard(gen, tokenizer, url: str, out: Path, sampling: SamplingConfig, seed: int, complete: bool,
                 batch_size: int = 32) -> dict:
    """Write OUT (via a temporary name) from the conditions in URL; returns its manifest entry."""
    import webdataset as wds

    tmp = out.with_name(f".{out.name}.tmp")
    written, batch = 0, []
    samples = wds.DataPipeline(wds.SimpleShardList([url]), wds.tarfile_to_samples())
    with wds.TarWriter(str(tmp), mtime=0.0) as sink:
        for sample in samples:
            batch.append(sample)
            if len(batch) == batch_size:
                _write(sink, batch, *_sample_batch(gen, tokenizer, batch, sampling, seed + written, complete))
                written, batch = written + len(batch), []
        if batch:
            _write(sink, batch, *_sample_batch(gen, tokenizer, batch, sampling, seed + written, complete))
            written += len(batch)
    os.replace(tmp, out)
    return {**shard_entry(out, written), "source": url}
