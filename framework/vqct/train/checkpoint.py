"""Checkpoint contents: two DeepSpeed checkpoints (generator, discriminator; stage 2 has the
first only) and our own
small state (step, MLflow run id, codebook-usage window, fault counters) as JSON +
safetensors, with a per-rank manifest that proves the files complete
(records/checkpoint_integrity.py).

Every rank saves into its own local directory; Ray Train merges the ranks' directories
into one checkpoint and registers it only once every rank has reported. Nothing is
unpickled: DeepSpeed's .pt files are read with torch.load(weights_only=True).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vqct.files import atomic_write_text
from vqct.records.checkpoint_integrity import STATE_FILE, verify_checkpoint, write_manifest
from vqct.records.deepspeed_files import TAG, trusted_loading

USAGE_FILE = "usage_window.safetensors"


def save_checkpoint(directory: Path, gen, disc, state: dict, usage_windows: dict[str, list[torch.Tensor]],
                    rank: int) -> None:
    """Collective: every rank calls it with its own DIRECTORY."""
    gen.save_checkpoint(str(directory / "generator"), tag=TAG)
    if disc is not None:  # stage 2 trains one engine
        disc.save_checkpoint(str(directory / "discriminator"), tag=TAG)
    if rank == 0:
        windows = {name: torch.stack(w) for name, w in usage_windows.items() if w}
        if windows:
            save_file(windows, str(directory / USAGE_FILE))
        atomic_write_text(directory / STATE_FILE, json.dumps(state, indent=2))
    write_manifest(directory, rank)  # last: its presence says this rank's files are complete


def load_checkpoint(directory: Path, gen, disc) -> tuple[dict, dict[str, list[torch.Tensor]]]:
    """Collective: restores both engines (weights, optimizer, lr schedule); returns our state.
    Raises DamagedCheckpoint when the files do not match their manifests."""
    directory = Path(directory)
    state = verify_checkpoint(directory)
    with trusted_loading():
        for engine, name in ((gen, "generator"), (disc, "discriminator")):
            if engine is None:
                continue
            path, _ = engine.load_checkpoint(str(directory / name), tag=TAG, load_optimizer_states=True,
                                             load_lr_scheduler_states=True)
            if path is None:
                raise FileNotFoundError(f"checkpoint {directory / name} could not be loaded by DeepSpeed")
    windows = {}
    if (directory / USAGE_FILE).is_file():
        windows = {name: list(t) for name, t in load_file(str(directory / USAGE_FILE)).items()}
    return state, windows
