"""Load a trained tokenizer from a vqct checkpoint, outside of DeepSpeed and Ray.

A checkpoint directory (`runs/<run>/checkpoint_<time>/`) holds the generator's DeepSpeed
checkpoint and `vqct_state.json` with the resolved config and the priors path; DeepSpeed's
own zero_to_fp32 consolidates the ZeRO shards into one fp32 state dict (a stage-0
checkpoint has none: records/deepspeed_files.py reads its model file).
"""

from __future__ import annotations

from pathlib import Path

import torch

from vqct.config.schema import Config, VQCTConfig
from vqct.config.typed import config_from_dict
from vqct.errors import UserError
from vqct.records.checkpoint_integrity import STATE_FILE, DamagedCheckpoint, read_state
from vqct.records.deepspeed_files import fp32_weights
from vqct.records.storage import local_copy
from vqct.tokenizer.model import VQTokenizer, build_quantizer, build_tokenizer


def checkpoint_config(checkpoint: str | Path) -> tuple[Config, dict]:
    """(the run's typed config, the whole stored state) of a checkpoint directory."""
    if not (Path(checkpoint) / STATE_FILE).is_file():
        raise UserError(f"{checkpoint}: not a vqct checkpoint (no {STATE_FILE}); give a "
                        "runs/<run>/checkpoint_<time> directory")
    try:
        state = read_state(Path(checkpoint))
    except DamagedCheckpoint as exc:
        raise UserError(f"{checkpoint}: damaged checkpoint ({exc}); give another checkpoint of the run") from None
    if "config" not in state:
        raise UserError(f"{checkpoint}: written by an older vqct without the resolved config in "
                        f"{STATE_FILE}; retrain or evaluate a newer checkpoint")
    return config_from_dict(state["config"], stored=True), state


def tokenizer_config(directory: str | Path) -> Config:
    """The typed config of a checkpoint or of an exported tokenizer directory."""
    from vqct.tokenizer.pretrained import CONFIG_FILE, read_config

    if (Path(directory) / CONFIG_FILE).is_file():
        return read_config(directory)[0]
    return checkpoint_config(directory)[0]


def load_tokenizer(checkpoint: str | Path, device: str | torch.device = "cpu",
                   text_encoder=None, heads: bool = True) -> tuple[VQTokenizer, Config]:
    """CHECKPOINT: a checkpoint directory, or an exported tokenizer directory (which has no
    heads); tracking/targets.py resolves the other forms (run ids, models:/ URIs) to these.
    Returns (the tokenizer in eval mode, the run's config). TEXT_ENCODER: reuse one the
    caller already loaded for this run's text model instead of loading it again. HEADS=False:
    without the alignment heads (what encoding and decoding need), so no text model loads."""
    from vqct.tokenizer.pretrained import CONFIG_FILE, from_pretrained

    checkpoint = Path(checkpoint)
    if (checkpoint / CONFIG_FILE).is_file():
        return from_pretrained(checkpoint, device)
    cfg, state = checkpoint_config(checkpoint)
    priors = None
    if isinstance(cfg.quantizer, VQCTConfig):
        from vqct.text.priors import load_priors

        priors = load_priors(local_copy(state["priors_dir"]))  # the run's copy, on an object store
    if heads:
        if text_encoder is None and cfg.align.enabled:
            from vqct.text.encoders import TextEncoder

            text_encoder = TextEncoder(cfg.text.model, cfg.align.context_length)
        model = build_tokenizer(cfg, priors, text_encoder)
    else:
        model = VQTokenizer(cfg.model, build_quantizer(cfg.quantizer, cfg.model.embed_dim, priors), cfg.data.image_size)
    weights = fp32_weights(checkpoint / "generator")
    if not heads:
        weights = {k: v for k, v in weights.items() if not k.startswith("align.")}
    model.load_state_dict(weights)
    return model.eval().to(device), cfg
