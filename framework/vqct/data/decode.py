"""Decode one raw webdataset sample into (image tensor, caption, key), or say why not; and
the inverse that every shard writer uses (encode_image).

Real LAION shards hold every kind of image: grey, palette, RGBA, CMYK, 16-bit PNG,
huge JPEGs. Everything becomes 8-bit RGB here; what can't be decoded is rejected with
a reason so that the loader can count it.
"""

from __future__ import annotations

import io
import random
from typing import Optional

import numpy as np
import torch
from PIL import Image

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
_PIL_FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}
CAPTION_EXTS = ("txt",)


def encode_image(image: Image.Image, ext: str = "jpg", quality: int = 95) -> bytes:
    """IMAGE as the bytes of a shard member named *.EXT (jpg, png or webp)."""
    out = io.BytesIO()
    image.save(out, format=_PIL_FORMATS[ext], quality=quality)
    return out.getvalue()


class BadSample(Exception):
    """A sample that can't be used; `kind` names the fault for the skip counters."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any PIL mode, compositing transparency over white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.uint32)
        peak = 65535 if image.mode.startswith("I;16") or array.max() > 255 else 255
        image = Image.fromarray((array * 255 // peak).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def resize_crop(image: Image.Image, size: int, rng: Optional[random.Random] = None) -> Image.Image:
    """Shorter side to SIZE, then a centre crop (or a random one when RNG is given)."""
    w, h = image.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((nw, nh), Image.BICUBIC, reducing_gap=3.0)
    if rng is None:
        left, top = (nw - size) // 2, (nh - size) // 2
    else:
        left, top = rng.randint(0, nw - size), rng.randint(0, nh - size)
    return image.crop((left, top, left + size, top + size))


def decode_image(data: bytes, size: int, rng: Optional[random.Random] = None) -> torch.Tensor:
    """Bytes -> float tensor (3, size, size) in [-1, 1]."""
    try:
        image = Image.open(io.BytesIO(data))
        if image.format == "JPEG":
            image.draft("RGB", (size, size))  # decode big JPEGs at reduced scale: far faster
        image.load()
        image = resize_crop(to_rgb(image), size, rng)
    except Exception as exc:  # PIL raises many types for broken files
        raise BadSample("bad_image", f"{type(exc).__name__}: {exc}") from None
    array = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
    return array.permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def decode_caption(data: bytes) -> str:
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise BadSample("bad_caption", "caption is not UTF-8") from None
    if not text:
        raise BadSample("missing_caption", "empty caption")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # Several captions, one per line (COCO, CUB): one at random each time the sample is read.
    return random.choice(lines) if len(lines) > 1 else text


def _first(sample: dict, exts: tuple[str, ...]) -> Optional[bytes]:
    for ext in exts:
        if ext in sample:
            return sample[ext]
    return None


def image_bytes(sample: dict) -> Optional[bytes]:
    """The sample's image as stored (the first of IMAGE_EXTS it has), or None."""
    return _first(sample, IMAGE_EXTS)


def decode_sample(sample: dict, size: int, rng: Optional[random.Random] = None) -> tuple:
    """Raw sample dict -> (image, caption, key); raises BadSample with a kind."""
    raw_image = image_bytes(sample)
    if raw_image is None:
        raise BadSample("missing_image", f"no image in sample {sample.get('__key__')}")
    raw_caption = _first(sample, CAPTION_EXTS)
    if raw_caption is None:
        raise BadSample("missing_caption", f"no caption in sample {sample.get('__key__')}")
    caption = decode_caption(raw_caption)
    return decode_image(raw_image, size, rng), caption, str(sample.get("__key__", ""))
