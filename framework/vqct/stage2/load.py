"""Load a trained generator from its checkpoint (or run directory), outside DeepSpeed and Ray:
its typed config, the code set it was trained on (layout and tokenizer directory), its fp32
weights, and the frozen text model of the caption condition."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from vqct.config.generator import CaptionConditionConfig, GeneratorConfig
from vqct.config.schema import TrainerConfig
from vqct.config.typed import generator_config_from_dict
from vqct.errors import UserError
from vqct.records.checkpoint_integrity import STATE_FILE, DamagedCheckpoint, choose_checkpoint, read_state
from vqct.records.deepspeed_files import fp32_weights
from vqct.records.run_record import is_run_dir
from vqct.stage2.build import build_generator
from vqct.stage2.captions import text_width
from vqct.stage2.generator import CodeGenerator, CodeLayout


@dataclass
class TrainedGenerator:
    model: CodeGenerator
    config: GeneratorConfig
    code_set: dict  # layout, digest, tokenizer_dir
    text_encoder: object | None  # the caption condition's frozen text model
    checkpoint: Path


def generator_checkpoint(target: str | Path) -> Path:
    """A checkpoint directory, a run directory (its newest intact checkpoint), or a run name
    under the default storage (runs/)."""
    path = Path(target).expanduser()
    named = Path(TrainerConfig().storage_path) / str(target)
    if not path.exists() and "/" not in str(target) and is_run_dir(named):  # a run name under runs/
        path = named
    if is_run_dir(path):
        latest, _ = choose_checkpoint(path)
        if latest is None:
            raise UserError(f"{target}: this run has no intact checkpoint yet")
        return latest
    if not (path / STATE_FILE).is_file():
        raise UserError(f"{target}: not a trained generator here; give a run directory (runs/<run>), a run "
                        "name, a checkpoint (runs/<run>/checkpoint_<time>), a generator directory or "
                        "models:/<generator recipe>/<version>")
    return path


def load_generator(target: str | Path, device: str | torch.device = "cpu") -> TrainedGenerator:
    checkpoint = generator_checkpoint(target)
    try:
        state = read_state(checkpoint)
    except DamagedCheckpoint as exc:
        raise UserError(f"{checkpoint}: damaged checkpoint ({exc})") from None
    if "code_set" not in state:
        raise UserError(f"{checkpoint}: a tokenizer checkpoint, not a generator's; give a generator run")
    cfg = generator_config_from_dict(state["config"], stored=True)
    encoder, text_dim = None, 0
    if isinstance(cfg.condition, CaptionConditionConfig):
        from vqct.text.encoders import TextEncoder

        encoder = TextEncoder(cfg.condition.text_model, cfg.condition.tokens + 2, device)
        text_dim = text_width(encoder)
    model = build_generator(cfg, CodeLayout.from_dict(state["code_set"]["layout"]), text_dim)
    model.load_state_dict(fp32_weights(checkpoint / "generator"))
    return TrainedGenerator(model.eval().to(device), cfg, state["code_set"], encoder, checkpoint)
