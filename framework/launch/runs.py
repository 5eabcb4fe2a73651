"""Run directories under trainer.storage_path: naming a new run, finding one to resume.

Each run directory holds Ray Train's checkpoints and `vqct_run.json`, which records the
MLflow run id so that a resumed run logs into the same MLflow run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from vqct.errors import UserError

RUN_FILE = "vqct_run.json"


def read_run(run_dir: Path) -> dict:
    return json.loads((run_dir / RUN_FILE).read_text())


def write_run(run_dir: Path, info: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{RUN_FILE}.tmp"
    tmp.write_text(json.dumps(info, indent=2))
    tmp.replace(run_dir / RUN_FILE)  # atomic: never a half-written run file


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
