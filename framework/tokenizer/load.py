"""Load a trained tokenizer from a vqct checkpoint, outside of DeepSpeed and Ray.

A checkpoint directory (`runs/<run>/checkpoint_<time>/`) holds the generator's DeepSpeed
checkpoint and `vqct_state.json` with the resolved config and the priors path; DeepSpeed's
own zero_to_fp32 consolidates the ZeRO shards into one fp32 state dict.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vqct.align.heads import context_length
from vqct.align.heads import enabled as align_enabled
from vqct.errors import UserError
from vqct.tokenizer.model import VQTokenizer, build_tokenizer
from vqct.train.checkpoint import STATE_FILE, TAG, trusted_loading


def read_state(checkpoint: str | Path) -> dict:
    """The checkpoint's `vqct_state.json`: {'config': resolved config, 'priors_dir': ...}."""
    state_path = Path(checkpoint) / STATE_FILE
    if not state_path.is_file():
        raise UserError(f"{checkpoint}: not a vqct checkpoint (no {STATE_FILE}); give a "
                        "runs/<run>/checkpoint_<time> directory")
    state = json.loads(state_path.read_text())
    if "config" not in state:
        raise UserError(f"{checkpoint}: written by an older vqct without the resolved config in "
                        f"{STATE_FILE}; retrain or evaluate a newer checkpoint")
    return state


def load_tokenizer(checkpoint: str | Path, device: str | torch.device = "cpu",
                   text_encoder=None) -> tuple[VQTokenizer, dict]:
    """CHECKPOINT: a checkpoint directory (vqct.load_tokenizer also takes models:/ URIs).
    Returns (the tokenizer in eval mode, the run's resolved config). TEXT_ENCODER: reuse
    one the caller already loaded for this run's text model instead of loading it again."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    checkpoint = Path(checkpoint)
    state = read_state(checkpoint)
    cfg = state["config"]
    priors = None
    if cfg["quantizer"]["name"] == "vqct":
        from vqct.text.priors import load_priors

        priors = load_priors(state["priors_dir"])
    if text_encoder is None and align_enabled(cfg):
        from vqct.text.encoders import TextEncoder

        text_encoder = TextEncoder(cfg["text"]["model"], context_length(cfg))
    model = build_tokenizer(cfg, priors, text_encoder)
    with trusted_loading():
        weights = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint / "generator"), tag=TAG)
    model.load_state_dict(weights)
    return model.eval().to(device), cfg
