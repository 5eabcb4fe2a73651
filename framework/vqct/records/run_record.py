"""The files a run directory holds beside Ray Train's checkpoints: `vqct_run.json` (the MLflow
run id, so that a resumed run logs into the same MLflow run) and `vqct_stopped.json` (why the
workers stopped a run that a retry would only repeat)."""

from __future__ import annotations

import json
from pathlib import Path

from vqct.files import atomic_write_text

RUN_FILE = "vqct_run.json"
STOP_FILE = "vqct_stopped.json"
PRIORS_DIR = "priors"  # on an object store, the run's copy of the text priors its workers load


def is_run_dir(path: Path) -> bool:
    return (path / RUN_FILE).is_file()


def read_run(run_dir: Path) -> dict:
    return json.loads((run_dir / RUN_FILE).read_text())


def write_run(run_dir: Path, info: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / RUN_FILE, json.dumps(info, indent=2))


def write_stop(run_dir: Path, step: int, reason: str) -> None:
    """Rank 0: the run stopped for a reason a retry would repeat (see errors.RunStopped)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / STOP_FILE, json.dumps({"step": step, "reason": reason}))


def take_stop(run_dir: Path) -> dict | None:
    """The driver: the stop the workers left, if any (removed, so a resume starts clean)."""
    path = run_dir / STOP_FILE
    if not path.is_file():
        return None
    stop = json.loads(path.read_text())
    path.unlink()
    return stop
