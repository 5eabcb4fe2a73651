"""Reading DeepSpeed's checkpoint files without running code from them.

Training restores its engines from them and the tokenizer loader consolidates the
generator's ZeRO shards; both read them only inside `trusted_loading()`.
"""

from __future__ import annotations

import contextlib
import os

import torch

TAG = "state"  # the DeepSpeed tag every vqct checkpoint is saved under


def _deepspeed_checkpoint_types() -> list:
    """The only non-tensor classes in DeepSpeed's optimizer files (found by
    torch.serialization.get_unsafe_globals_in_checkpoint over ZeRO 0-3 x fp32/bf16):
    plain data holders that construct no code."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


@contextlib.contextmanager
def trusted_loading():
    """Every torch.load inside — DeepSpeed's own, which pass weights_only=False, included —
    runs as weights_only=True with DeepSpeed's data classes allowlisted: a tampered
    checkpoint fails to load instead of running code."""
    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals(_deepspeed_checkpoint_types()):
            yield
    finally:
        if previous is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous
