"""`vqct bench data`: how many images per second the loader delivers at the training size,
from JPEG shards with LAION-like original sizes (raw) and from the same images packed at the
training size (pre-resized), per loader worker process, against what the step consumes.

The corpus is generated here (shapes scenes drawn at each image's own size, with sensor-like
noise so that JPEG has texture to code), so the command needs no dataset. On a GPU,
`--device-decode` also times torchvision's nvJPEG decoder on the raw shards.
"""

from __future__ import annotations

import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vqct.data.decode import encode_image, resize_crop
from vqct.data.shapes import make_scene

# LAION-400M's shorter sides: median about 400 px, long right tail; aspect 3:4 to 16:9.
_MEDIAN_SHORT_SIDE = 400
_SHORT_SIDE_SIGMA = 0.45
_SHORT_SIDE_RANGE = (256, 2048)


def _laion_like(rng: random.Random, index: int) -> Image.Image:
    short = int(min(max(rng.lognormvariate(math.log(_MEDIAN_SHORT_SIDE), _SHORT_SIDE_SIGMA),
                        _SHORT_SIDE_RANGE[0]), _SHORT_SIDE_RANGE[1]))
    aspect = rng.uniform(1.0, 16 / 9)
    w, h = (int(short * aspect), short) if index % 2 else (short, int(short * aspect))
    scene = make_scene(rng, 64)[0].resize((w, h), Image.BILINEAR)
    noise = np.random.default_rng(index).normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(scene, dtype=np.float32) + noise, 0, 255).astype(np.uint8))


def write_corpus(out: Path, images: int, per_shard: int, size: int, seed: int) -> tuple[dict[str, list[str]], float]:
    """Raw and pre-resized shards of the same IMAGES scenes; returns (their URLs, the raw
    images' mean megapixels)."""
    import webdataset as wds
    from tqdm import tqdm

    rng = random.Random(seed)
    urls: dict[str, list[str]] = {"raw": [], "resized": []}
    writers: dict = {}
    pixels = 0
    for i in tqdm(range(images), desc="bench data: corpus", unit="img", file=sys.stderr, mininterval=2.0):
        if i % per_shard == 0:
            for variant in urls:
                if variant in writers:
                    writers[variant].close()
                path = out / variant / f"{i // per_shard:05d}.tar"
                path.parent.mkdir(parents=True, exist_ok=True)
                writers[variant] = wds.TarWriter(str(path))
                urls[variant].append(str(path))
        image = _laion_like(rng, i)
        pixels += image.width * image.height
        caption = f"synthetic scene {i}"
        writers["raw"].write({"__key__": f"{i:08d}", "jpg": encode_image(image, quality=90), "txt": caption})
        writers["resized"].write({"__key__": f"{i:08d}", "jpg": encode_image(resize_crop(image, size)), "txt": caption})
    for writer in writers.values():
        writer.close()
    return urls, round(pixels / images / 1e6, 3)


def _loader_rate(urls: list[str], size: int, batch: int, workers: int) -> dict:
    """One pass over URLS through vqct's own loader: images/s once the first batch is out
    (worker start-up is reported apart)."""
    from vqct.data.loader import ImageCaptionStream, Loader

    stream = ImageCaptionStream(urls, image_size=size, shuffle_buffer=0, epochs=1)
    start = time.perf_counter()
    first_at, count = None, 0
    for out in Loader(stream, batch_size=batch, num_workers=workers):
        if first_at is None:
            first_at = time.perf_counter()
        else:
            count += out.images.shape[0]
    seconds = time.perf_counter() - first_at
    rate = count / seconds if seconds > 0 else float("nan")
    return {"workers": workers, "images_per_s": round(rate, 1), "per_worker": round(rate / max(1, workers), 1),
            "startup_s": round(first_at - start, 2)}


def _device_decode_rate(urls: list[str], size: int, batch: int) -> dict:
    """nvJPEG through torchvision on the GPU: bytes read on the host, decoded, resized and
    cropped on the device, a batch at a time."""
    import torch.nn.functional as F
    import webdataset as wds
    from torchvision.io import decode_jpeg

    device = torch.device("cuda")
    chunks = [s["jpg"] for s in wds.WebDataset(urls, shardshuffle=False)]
    count, start = 0, None
    for i in range(0, len(chunks), batch):
        if i == batch:  # the first batch warms the decoder up
            torch.cuda.synchronize(device)
            start = time.perf_counter()
        data = [torch.frombuffer(bytearray(c), dtype=torch.uint8) for c in chunks[i:i + batch]]
        decoded = decode_jpeg(data, device=device)
        for image in decoded:
            scale = size / min(image.shape[1:])
            h, w = max(size, round(image.shape[1] * scale)), max(size, round(image.shape[2] * scale))
            resized = F.interpolate(image[None].float(), size=(h, w), mode="bicubic", antialias=True)
            top, left = (h - size) // 2, (w - size) // 2
            resized[..., top:top + size, left:left + size].div_(127.5).sub_(1.0)
        if start is not None:
            count += len(data)
    torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start if start else float("nan")
    return {"images_per_s": round(count / seconds, 1) if count else None}


def bench_data(out: str, images: int, per_shard: int, size: int, batch: int, step_ms: float,
               workers: list[int], device_decode: bool, seed: int = 0) -> dict:
    from vqct.bench.measure import device_name
    from vqct.errors import UserError

    if device_decode and not torch.cuda.is_available():
        raise UserError("--device-decode needs a CUDA device (torchvision's nvJPEG decoder)")
    if images < 2 * batch:
        raise UserError(f"--images {images} must be at least twice --batch-size {batch}: the first batch is "
                        "start-up, the rest are timed")
    corpus, megapixels = write_corpus(Path(out), images, per_shard, size, seed)
    demand = batch / (step_ms / 1000)
    results = {}
    for variant in ("raw", "resized"):
        rows = []
        for n in workers:
            print(f"bench data: {variant}, {n} worker(s) ...", file=sys.stderr)
            row = _loader_rate(corpus[variant], size, batch, n)
            row["supply_vs_demand"] = round(row["images_per_s"] / demand, 3)
            rows.append(row)
        results[variant] = rows
    for raw, resized in zip(results["raw"], results["resized"]):
        resized["speedup_vs_raw"] = round(resized["images_per_s"] / raw["images_per_s"], 3)
    if device_decode:
        results["device_decode_raw"] = _device_decode_rate(corpus["raw"], size, batch)
    return {"bench": "data", "device": device_name(torch.device("cuda" if device_decode else "cpu")),
            "images": images, "image_size": size, "mean_source_megapixels": megapixels,
            "batch_size": batch, "step_ms": step_ms, "demand_images_per_s": round(demand, 1),
            "shards": str(Path(out)), "results": results}
