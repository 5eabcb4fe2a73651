"""`vqct generate TARGET --caption ... -n 16 --out grid.png`: sample codes from a trained
generator and decode them with the tokenizer its code set carries.

Conditions: a caption (caption generators), a segmentation map (segmentation generators: a
class-per-pixel PNG such as the scenes' seg.png), and for any generator a prefix image whose
top rows of codes are kept (image completion).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vqct.config.generator import CaptionConditionConfig, SegmentationConditionConfig
from vqct.data.code_loader import grid_classes
from vqct.data.decode import BadSample
from vqct.errors import UserError
from vqct.stage2.captions import caption_features
from vqct.stage2.code_shards import as_columns
from vqct.stage2.load import TrainedGenerator
from vqct.stage2.pretrained import open_generator
from vqct.stage2.sampling import SamplingConfig, sample_codes

MIN_TILE = 128  # grid tiles are upscaled (nearest) to at least this many pixels, as eval grids are


def _condition(gen: TrainedGenerator, n: int, captions: list[str] | None, segmentation: np.ndarray | None,
               null: bool = False):
    """The condition of N samples: one caption each (or one for all), or one class map each
    (N, S, S) (or one (S, S) for all). NULL: the sampler puts the null condition in its place, so a
    missing one is a placeholder."""
    cond = gen.config.condition
    if null and not captions and segmentation is None:
        captions = [""]
        segmentation = np.zeros((gen.model.layout.height, gen.model.layout.width), np.uint8)
    if isinstance(cond, CaptionConditionConfig):
        if not captions:
            raise UserError("this generator is caption-conditioned: give --caption \"...\"")
        captions = captions * n if len(captions) == 1 else captions
        return caption_features(gen.text_encoder, captions, cond.tokens)
    if isinstance(cond, SegmentationConditionConfig):
        return _segmentation_grids(segmentation, n, gen.model.layout.height, cond.classes)
    if captions or segmentation is not None:
        raise UserError("this generator is unconditional: drop --caption / --segmentation")
    return None


def _segmentation_grids(segmentation: np.ndarray | None, n: int, grid: int, classes: int) -> torch.Tensor:
    """One class map (S, S) for all N samples, or N maps (N, S, S) -> (N, grid, grid)."""
    if segmentation is None:
        raise UserError("this generator is segmentation-conditioned: give --segmentation MAP.png")
    maps = np.asarray(segmentation)
    if maps.ndim == 2:
        maps = maps[None]
    if maps.ndim != 3 or maps.shape[0] not in (1, n) or maps.size == 0 or maps.min() < 0 or maps.max() >= classes:
        raise UserError(f"the segmentation must be one class map (S, S) or one per sample ({n}, S, S), with "
                        f"classes 0 to {classes - 1} (the scenes' seg.png); got shape {maps.shape}")
    try:
        grids = torch.stack([grid_classes(m, grid, classes) for m in maps])
    except BadSample as exc:
        raise UserError(f"the segmentation: {exc}") from None
    return grids.expand(n, -1, -1)


@torch.no_grad()
def sample_images(gen: TrainedGenerator, tokenizer, n: int, captions: list[str] | None = None,
                  segmentation: np.ndarray | None = None, prefix: torch.Tensor | None = None,
                  sampling: SamplingConfig | None = None, seed: int = 0) -> torch.Tensor:
    """N samples decoded by TOKENIZER: float (N, 3, S, S) in [0, 1]. What `vqct generate` and the
    logged MLflow model both run."""
    sampling = sampling or SamplingConfig()
    if sampling.cfg_scale is not None and not gen.model.guided:
        raise UserError("--cfg-scale needs a caption- or segmentation-conditioned generator")
    if sampling.null_condition and not gen.model.guided:
        raise UserError("--null-condition needs a caption- or segmentation-conditioned generator; this one is "
                        "unconditional already: drop the flag")
    layout = gen.model.layout
    cond = _condition(gen, n, captions, segmentation, sampling.null_condition)
    codes = sample_codes(gen.model, cond, n, sampling, prefix=prefix, generator=torch.Generator().manual_seed(seed))
    indices = codes.reshape(n, layout.height, layout.width, -1)
    images = tokenizer.detokenize(indices[..., 0] if indices.shape[-1] == 1 else indices)
    return ((images.float() + 1) / 2).clamp(0, 1)


def _prefix(tokenizer, cfg, image_path: str, n: int, rows: int) -> torch.Tensor:
    """The codes of the image's top ROWS rows of the grid, repeated N times."""
    from vqct.data.decode import decode_image

    image = decode_image(Path(image_path).read_bytes(), cfg.data.image_size)
    codes = as_columns(tokenizer.tokenize(image[None]))  # (1, h, w, columns)
    return codes[:, :rows].reshape(1, -1, codes.shape[-1]).expand(n, -1, -1)


def _save_grid(images: torch.Tensor, out: Path) -> None:
    from torchvision.utils import save_image

    scale = max(1, math.ceil(MIN_TILE / images.shape[-1]))
    images = F.interpolate(images, scale_factor=scale, mode="nearest")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image(images, str(out), nrow=int(math.ceil(math.sqrt(images.shape[0]))), padding=4, pad_value=1.0)


def generate(target: str, out: str, n: int = 16, caption: str | None = None, segmentation: str | None = None,
             prefix_image: str | None = None, sampling: SamplingConfig | None = None, seed: int = 0) -> dict:
    from vqct.tokenizer.pretrained import read_config

    if n < 1:
        raise UserError(f"-n {n}: give at least one sample")
    sampling = sampling or SamplingConfig()
    try:
        sampling.check()
    except ValueError as exc:
        raise UserError(str(exc)) from None
    gen, tokenizer = open_generator(target)
    tok_cfg = read_config(gen.code_set["tokenizer_dir"])[0] if prefix_image is not None else None
    prefix, rows = None, 0
    if prefix_image is not None:
        rows = gen.model.layout.height // 2
        prefix = _prefix(tokenizer, tok_cfg, prefix_image, n, rows)
    classes = np.asarray(Image.open(segmentation), dtype=np.uint8) if segmentation else None
    print(f"sampling {n} x {gen.model.layout.length} positions ({'cache' if sampling.use_cache else 'no cache'})",
          file=sys.stderr)
    images = sample_images(gen, tokenizer, n, [caption] if caption is not None else None, classes, prefix,
                           sampling, seed)
    _save_grid(images, Path(out))
    return {"out": str(out), "samples": n, "checkpoint": str(gen.checkpoint), "condition": gen.config.condition.name,
            "caption": caption, "segmentation": segmentation, "prefix_rows": rows, "seed": seed,
            "tokenizer": gen.code_set["digest"][:12]}
