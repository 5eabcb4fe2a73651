"""`vqct caption`: greedy captions generated from an image's codes by a VQCT-VLT
checkpoint's translation module (for inspection)."""

from __future__ import annotations

from pathlib import Path

import torch

from vqct.data.decode import BadSample, decode_image
from vqct.errors import UserError
from vqct.tokenizer.load import load_tokenizer


def caption_images(checkpoint: str, images: list[str], max_length: int = 30) -> dict:
    from vqct.text.encoders import TextEncoder

    from vqct.tokenizer.pretrained import CONFIG_FILE

    if (Path(checkpoint) / CONFIG_FILE).is_file():
        raise UserError(f"{checkpoint}: an exported tokenizer keeps no translation module; give the VQCT-VLT "
                        "run's checkpoint, run directory, run name or run id")
    model, cfg = load_tokenizer(checkpoint)
    if model.align is None or model.align.vlt is None:
        raise UserError(f"{checkpoint}: this run has no translation module (align.vlt.enabled was false)")
    size = cfg.data.image_size
    batch = []
    for path in images:
        try:
            batch.append(decode_image(Path(path).read_bytes(), size))
        except (OSError, BadSample) as exc:
            raise UserError(f"{path}: cannot be read as an image ({exc})") from None
    tokenizer = TextEncoder(cfg.text.model, cfg.align.context_length).tokenizer
    start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    end = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        codes, _, _ = model.encode(torch.stack(batch))
        ids = model.align.vlt.generate(codes, start, end, max_length)
    captions = tokenizer.batch_decode(ids, skip_special_tokens=True)
    return {"captions": [{"image": p, "caption": c.strip()} for p, c in zip(images, captions)]}
