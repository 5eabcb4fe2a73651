"""Run directories under trainer.storage_path: naming a new run, finding one to resume.

Each run directory holds Ray Train's checkpoints and the run record (records/run_record.py).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from vqct.errors import UserError
from vqct.records.run_record import RUN_FILE, read_run


def _latest_for_recipe(storage: Path, recipe: str) -> Path | None:
    runs = [p.parent for p in storage.glob(f"*/{RUN_FILE}")]
    runs = [r for r in runs if read_run(r).get("recipe") == recipe]
    return max(runs, key=lambda r: (r / RUN_FILE).stat().st_mtime, default=None)


def choose_run(storage: Path, recipe: str, run_name: str | None, resume: bool) -> tuple[str, dict | None]:
    """Returns (run name, recorded run info when resuming)."""
    if resume:
        run_dir = storage / run_name if run_name else _latest_for_recipe(storage, recipe)
        if run_dir is None or not (run_dir / RUN_FILE).is_file():
            what = f"run '{run_name}'" if run_name else f"any run of recipe '{recipe}'"
            raise UserError(f"trainer.resume=true but {what} was not found under {storage}: "
                            "check trainer.storage_path / trainer.run_name, or drop trainer.resume")
        return run_dir.name, read_run(run_dir)
    name = run_name or f"{recipe}-{time.strftime('%Y%m%d-%H%M%S')}"
    if (storage / name).exists():
        raise UserError(f"run '{name}' already exists under {storage}: pass trainer.resume=true to "
                        "continue it, or choose another trainer.run_name")
    return name, None


RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"


def repair_ray_snapshot(run_dir: Path, present: list[str] | None = None) -> Path | None:
    """Ray Train restores a run from its checkpoint snapshot, which it writes in place: a
    driver killed mid-write leaves it truncated, and a checkpoint it lists may be gone.
    Either would stop the resume inside Ray, so move such a snapshot aside; the workers
    then find the newest intact checkpoint by themselves (train/checkpoint_integrity.py).
    PRESENT: the run's checkpoint names (default: the directories beside the snapshot).
    Returns where it moved the snapshot, or None."""
    path = run_dir / RAY_SNAPSHOT
    if not path.is_file():
        return None
    if present is None:
        present = [p.name for p in run_dir.iterdir() if p.is_dir()]
    try:
        snapshot = json.loads(path.read_text())
        listed = [r["checkpoint_dir_name"] for r in snapshot.get("checkpoint_results", [])]
        missing = [name for name in listed if name not in present]
        problem = f"lists missing checkpoint {missing[0]}" if missing else None
    except (ValueError, KeyError, TypeError) as exc:
        problem = f"is unreadable ({type(exc).__name__})"
    if not problem:
        return None
    aside = path.with_name(f"{RAY_SNAPSHOT}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    path.rename(aside)
    print(f"warning: Ray Train's snapshot {path} {problem}; moved to {aside.name}, "
          "resuming from the newest intact checkpoint instead", file=sys.stderr)
    return aside
