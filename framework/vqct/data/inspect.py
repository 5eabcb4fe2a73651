"""`vqct data inspect SHARDS`: what a shard set holds, before training on it.

Per shard the samples it holds (empty shards named); over all samples the image formats,
image sizes and caption lengths (quantiles), and the samples the loader would skip, by the
same kinds it counts (data/decode.py). Images are opened for their header only: fast.
"""

from __future__ import annotations

import io
import sys
from collections import Counter

from vqct.data.decode import CAPTION_EXTS, IMAGE_EXTS

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def _quantiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    return {f"p{round(q * 100)}": ordered[min(len(ordered) - 1, int(q * len(ordered)))] for q in QUANTILES}


def _inspect_sample(sample: dict, found: dict) -> None:
    from PIL import Image

    ext = next((e for e in IMAGE_EXTS if e in sample), None)
    if ext is None:
        found["faults"]["missing_image"] += 1
        return
    caption_ext = next((e for e in CAPTION_EXTS if e in sample), None)
    try:
        with Image.open(io.BytesIO(sample[ext])) as image:
            width, height = image.size
            found["formats"][image.format or ext] += 1
    except Exception:
        found["faults"]["bad_image"] += 1
        return
    if caption_ext is None:
        found["faults"]["missing_caption"] += 1
        return
    try:
        lines = [ln for ln in sample[caption_ext].decode("utf-8").splitlines() if ln.strip()]
    except UnicodeDecodeError:
        found["faults"]["bad_caption"] += 1
        return
    if not lines:
        found["faults"]["missing_caption"] += 1
        return
    found["sides"].append(min(width, height))
    found["pixels"].append(width * height)
    found["captions_per_sample"].append(len(lines))
    found["caption_words"].extend(len(line.split()) for line in lines)


def inspect_shards(spec, max_samples: int | None = None) -> dict:
    import webdataset as wds
    from tqdm import tqdm

    from vqct.data.shards import resolve_shards

    urls = resolve_shards(spec, "shards")
    per_shard = Counter({url: 0 for url in urls})
    found = {"faults": Counter(missing_image=0, bad_image=0, missing_caption=0, bad_caption=0, tar_error=0),
             "formats": Counter(), "sides": [], "pixels": [], "captions_per_sample": [], "caption_words": []}

    def tar_error(exc: Exception) -> bool:
        found["faults"]["tar_error"] += 1
        return True

    pipeline = wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples(handler=tar_error))
    seen = 0
    with tqdm(desc="inspect", unit="sample", file=sys.stderr, mininterval=1.0) as bar:
        for sample in pipeline:
            per_shard[sample.get("__url__")] += 1
            _inspect_sample(sample, found)
            seen += 1
            bar.update(1)
            if max_samples and seen >= max_samples:
                break
    shards = [{"shard": url, "samples": per_shard[url]} for url in urls]
    result = {
        "shards": len(urls), "samples": seen, "empty_shards": [s["shard"] for s in shards if s["samples"] == 0],
        "samples_per_shard": _quantiles([s["samples"] for s in shards]),
        "image_formats": dict(found["formats"]), "image_shorter_side": _quantiles(found["sides"]),
        "image_megapixels": _quantiles([p / 1e6 for p in found["pixels"]]),
        "captions_per_sample": _quantiles(found["captions_per_sample"]),
        "caption_words": _quantiles(found["caption_words"]),
        "unusable": dict(found["faults"]), "complete": not max_samples or seen < max_samples,
        "per_shard": shards,
    }
    print(_table(result), file=sys.stderr)
    return result


def _table(result: dict) -> str:
    rows = [("shards", result["shards"]), ("samples", result["samples"]),
            ("empty shards", len(result["empty_shards"])), ("image formats", result["image_formats"]),
            ("unusable samples", {k: v for k, v in result["unusable"].items() if v} or 0)]
    for key, title in (("samples_per_shard", "samples per shard"), ("image_shorter_side", "shorter side (px)"),
                       ("caption_words", "caption words"), ("captions_per_sample", "captions per sample")):
        if result[key]:
            rows.append((f"{title} p5/p50/p95", f"{result[key]['p5']:.4g} / {result[key]['p50']:.4g} / "
                                                f"{result[key]['p95']:.4g}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
