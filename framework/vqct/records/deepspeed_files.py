"""Reading DeepSpeed's checkpoint files without running code from them.

Training restores its engines from them and the tokenizer loader consolidates the
generator's weights (`fp32_weights`, any ZeRO stage); both read them only inside
`trusted_loading()`.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

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


def zero_sharded(engine_dir: str | Path) -> bool:
    """Whether one engine's checkpoint was written by ZeRO 1-3: they keep the optimizer state
    in per-rank `*_optim_states.pt` files; stage 0 keeps everything in the model file."""
    return any((Path(engine_dir) / TAG).glob("*_optim_states.pt"))


def fp32_weights(engine_dir: str | Path) -> dict[str, torch.Tensor]:
    """One engine's weights in fp32, whatever its ZeRO stage. ZeRO 1-3: DeepSpeed's
    zero_to_fp32 gathers the shards. Stage 0 has nothing to gather and zero_to_fp32 refuses it:
    the model file's module, with the optimizer's fp32 master copies where it trained in bf16
    (the module itself then holds bf16 copies)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    with trusted_loading():
        if zero_sharded(engine_dir):
            return get_fp32_state_dict_from_zero_checkpoint(str(engine_dir), tag=TAG)
        saved = torch.load(Path(engine_dir) / TAG / "mp_rank_00_model_states.pt", map_location="cpu",
                           weights_only=True)
    weights = dict(saved["module"])
    masters = [t for group in (saved.get("optimizer") or {}).get("fp32_groups", []) for t in group]
    if masters:
        buffers = set(saved.get("buffer_names") or [])
        names = [name for name in weights if name not in buffers]
        if len(names) != len(masters) or any(weights[n].shape != t.shape for n, t in zip(names, masters)):
            raise ValueError(f"{engine_dir}: the fp32 master copies do not match the module's parameters")
        weights.update(zip(names, masters))
    return {name: tensor.float() if tensor.is_floating_point() else tensor for name, tensor in weights.items()}
