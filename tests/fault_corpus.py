"""A corpus of broken and unusual image-caption samples, as they turn up in LAION-scale
shards, written as webdataset tars. EXPECTED_SKIPS is what one pass over it must skip,
by kind; the unusual-but-valid samples (CMYK, 16-bit, 1x1, 10000x10000, a PNG named .jpg)
must be used."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

EXPECTED_SKIPS = {"bad_image": 2, "missing_image": 2, "bad_caption": 1, "missing_caption": 1, "tar_error": 1}
USABLE = 5 + 4 + 3  # unusual-but-valid + good samples in the first shard + good ones before the cut


def _encode(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def _good(i: int) -> dict:
    rng = np.random.default_rng(i)
    image = Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    return {"jpg": _encode(image, "JPEG"), "txt": f"a small red circle {i}".encode()}


def _faults() -> dict[str, dict]:
    jpeg = _good(0)["jpg"]
    caption = b"a large blue square"
    return {
        "truncated_jpeg": {"jpg": jpeg[: len(jpeg) // 2], "txt": caption},  # bad_image
        "zero_byte_image": {"jpg": b"", "txt": caption},  # bad_image
        "png_named_jpg": {"jpg": _encode(Image.new("RGB", (40, 30), (9, 99, 199)), "PNG"), "txt": caption},
        "unknown_extension": {"dat": jpeg, "txt": caption},  # missing_image
        "cmyk_jpeg": {"jpg": _encode(Image.new("CMYK", (48, 48), (0, 255, 255, 0)), "JPEG"), "txt": caption},
        "png_16bit": {"png": _encode(Image.fromarray(np.full((33, 35), 40000, np.uint16)), "PNG"),
                      "txt": caption},
        "one_pixel": {"png": _encode(Image.new("RGB", (1, 1), (255, 0, 0)), "PNG"), "txt": caption},
        "huge_10000": {"jpg": _encode(Image.new("RGB", (10000, 10000), (0, 128, 0)), "JPEG"), "txt": caption},
        "latin1_caption": {"jpg": jpeg, "txt": "un café crème".encode("latin-1")},  # bad_caption
        "empty_caption": {"jpg": jpeg, "txt": b"  \n"},  # missing_caption
        "json_only": {"json": json.dumps({"caption": "no image here"}).encode()},  # missing_image
    }


def _add(tar: tarfile.TarFile, key: str, sample: dict) -> None:
    for ext, data in sorted(sample.items()):
        info = tarfile.TarInfo(f"{key}.{ext}")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def write_fault_corpus(out: Path, usable: bool = True) -> list[Path]:
    """Two shards: every sample fault (plus good samples when USABLE), and a tar cut
    short inside a member (after good samples when USABLE)."""
    out.mkdir(parents=True, exist_ok=True)
    faults = _faults()
    if not usable:
        faults = {k: v for k, v in faults.items()
                  if k not in ("png_named_jpg", "cmyk_jpeg", "png_16bit", "one_pixel", "huge_10000")}
    first = out / "faults-000.tar"
    with tarfile.open(first, "w") as tar:
        for i, (name, sample) in enumerate(faults.items()):
            _add(tar, f"f{i:02d}_{name}", sample)
        for i in range(4 if usable else 0):
            _add(tar, f"g{i:02d}_good", _good(i + 1))
    second = out / "faults-001.tar"
    with tarfile.open(second, "w") as tar:
        for i in range(3 if usable else 0):
            _add(tar, f"h{i:02d}_good", _good(i + 10))
        _add(tar, "h99_cut", {"jpg": _encode(Image.fromarray(np.zeros((256, 256, 3), np.uint8) + 7), "PNG"),
                              "txt": b"cut off"})
    data = second.read_bytes()
    member = data.rfind(b"h99_cut.jpg")  # its header; cut inside its contents
    second.write_bytes(data[: member + 512 + 300])
    return [first, second]
