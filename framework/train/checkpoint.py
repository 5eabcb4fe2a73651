"""Checkpoint contents: two DeepSpeed checkpoints (generator, discriminator) and our own
small state (step, MLflow run id, codebook-usage window) as JSON + safetensors.

Every rank saves into its own local directory; Ray Train merges the ranks' directories
into one checkpoint and registers it only once every rank has reported, so a crash
mid-write never replaces the last complete checkpoint. Nothing here is a pickle.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

STATE_FILE = "vqct_state.json"
USAGE_FILE = "usage_window.safetensors"
TAG = "state"


def save_checkpoint(directory: Path, gen, disc, state: dict, usage_windows: dict[str, list[torch.Tensor]],
                    rank: int) -> None:
    """Collective: every rank calls it with its own DIRECTORY."""
    gen.save_checkpoint(str(directory / "generator"), tag=TAG)
    disc.save_checkpoint(str(directory / "discriminator"), tag=TAG)
    if rank == 0:
        windows = {name: torch.stack(w) for name, w in usage_windows.items() if w}
        if windows:
            save_file(windows, str(directory / USAGE_FILE))
        (directory / STATE_FILE).write_text(json.dumps(state, indent=2))


def load_checkpoint(directory: Path, gen, disc) -> tuple[dict, dict[str, list[torch.Tensor]]]:
    """Collective: restores both engines (weights, optimizer, lr schedule); returns our state."""
    directory = Path(directory)
    state_path = directory / STATE_FILE
    if not state_path.is_file():
        raise FileNotFoundError(f"checkpoint {directory} has no {STATE_FILE}: not a vqct checkpoint")
    state = json.loads(state_path.read_text())
    for engine, name in ((gen, "generator"), (disc, "discriminator")):
        path, _ = engine.load_checkpoint(str(directory / name), tag=TAG, load_optimizer_states=True,
                                         load_lr_scheduler_states=True)
        if path is None:
            raise FileNotFoundError(f"checkpoint {directory / name} could not be loaded by DeepSpeed")
    windows = {}
    if (directory / USAGE_FILE).is_file():
        windows = {name: list(t) for name, t in load_file(str(directory / USAGE_FILE)).items()}
    return state, windows
