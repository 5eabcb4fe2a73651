"""`vqct submit RECIPE [overrides] [--address URL] [--wait]`: `vqct train` as a Ray job.

The recipe is composed and checked here first (bad input never reaches the cluster), then
submitted through the Ray Jobs SDK with this directory as the job's working directory,
minus data, checkpoints, tracking stores and environments. The tracking URI and the
checkpoint storage are made absolute so that the run lands where the user looks (a shared
filesystem, or an MLflow server URL); the cluster's nodes need vqct installed, as for
`ray job submit --working-dir . -- vqct train RECIPE`.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from vqct.config.schema import Config
from vqct.errors import TrainingFailed, UserError

# What a job never needs to upload (Ray caps the working directory at 500 MiB anyway).
EXCLUDES = [".git", ".venv", "venv", ".whl", "data", "runs", "mlruns", "mlartifacts", "mlflow.db", "priors",
            "outputs", "multirun", ".pytest_cache", "__pycache__", "*.tar", "*.safetensors", "*.pt", "*.ckpt"]
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def job_address(address: str | None) -> str:
    """--address, else RAY_ADDRESS when it is a dashboard URL (as `ray job submit` reads it)."""
    if address:
        return address
    env = os.environ.get("RAY_ADDRESS", "")
    return env if env.startswith(("http://", "https://")) else DEFAULT_ADDRESS


def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    parsed = urlparse(address)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise UserError(f"--address {address}: give the Ray dashboard URL, e.g. {DEFAULT_ADDRESS}")
    try:
        return JobSubmissionClient(address)
    except Exception as exc:  # ConnectionError, or Ray's own wrappers around it
        raise UserError(f"--address {address}: no Ray job server answers there ({type(exc).__name__}); "
                        "start a cluster with `ray start --head` (dashboard on) or fix the address") from None


def _pinned_overrides(cfg: Config, overrides: list[str]) -> list[str]:
    """Absolute tracking URI and storage path, unless the user set them on the command line."""
    from vqct.tracking.mlflow_run import absolute_uri

    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o}
    extra = []
    if "tracking.uri" not in given:
        extra.append(f"tracking.uri={absolute_uri(cfg.tracking.uri)}")
    if "trainer.storage_path" not in given:
        extra.append(f"trainer.storage_path={Path(cfg.trainer.storage_path).expanduser().resolve()}")
    return extra


def entrypoint(recipe: str, overrides: list[str]) -> str:
    return shlex.join(["vqct", "train", recipe, *overrides])


def submit(recipe: str, overrides: list[str], address: str | None, wait: bool,
           working_dir: str = ".", timeout_s: float | None = None) -> dict:
    from vqct.config import load_recipe

    cfg = load_recipe(recipe, overrides)  # exit 2 here, before anything reaches the cluster
    overrides = [*overrides, *_pinned_overrides(cfg, overrides)]
    address = job_address(address)
    client = _client(address)
    command = entrypoint(recipe, overrides)
    # No env_vars here: `vqct train` gives its workers their own, and Ray refuses a job whose
    # driver sets a key the job's runtime environment already sets.
    runtime_env = {"working_dir": str(Path(working_dir).resolve()), "excludes": EXCLUDES}
    job_id = _submit_job(client, command, runtime_env, {"recipe": cfg.recipe, "family": cfg.family})
    print(f"submitted job {job_id} to {address}: {command}", file=sys.stderr)
    result = {"job_id": job_id, "address": address, "entrypoint": command, "recipe": cfg.recipe}
    if not wait:
        return {**result, "status": "PENDING"}
    status, logs = follow(client, job_id, timeout_s)
    result["status"] = status
    if status != "SUCCEEDED":
        tail = "\n".join(logs.splitlines()[-20:])
        print(tail, file=sys.stderr)
        raise TrainingFailed(f"job {job_id} ended {status}; its last log lines are above "
                             f"(all of them: ray job logs {job_id} --address {address})")
    return {**result, **_final_json(logs)}


def _submit_job(client, command: str, runtime_env: dict, metadata: dict, patience_s: float = 90.0) -> str:
    """Submit; a head that has just started answers "No available agent" until its dashboard
    agent registers, so that one error is retried for a while."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            return client.submit_job(entrypoint=command, runtime_env=runtime_env, metadata=metadata)
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(2.0)


def follow(client, job_id: str, timeout_s: float | None = None, poll_s: float = 2.0) -> tuple[str, str]:
    """Stream the job's log to stderr until it ends; returns (status, whole log)."""
    printed, deadline = 0, None if timeout_s is None else time.monotonic() + timeout_s
    try:
        while True:
            status = str(client.get_job_status(job_id).value)
            logs = client.get_job_logs(job_id)
            sys.stderr.write(logs[printed:])
            sys.stderr.flush()
            printed = len(logs)
            if status in TERMINAL:
                return status, logs
            if deadline is not None and time.monotonic() > deadline:
                raise TrainingFailed(f"job {job_id} still {status} after {timeout_s:.0f} s; it keeps running "
                                     f"(ray job stop {job_id} to stop it)")
            time.sleep(poll_s)
    except KeyboardInterrupt:
        print(f"\nstopped following job {job_id}; it keeps running (ray job stop {job_id} to stop it)",
              file=sys.stderr)
        raise


def _final_json(logs: str) -> dict:
    """The training's own final JSON line, when the job printed one."""
    import json

    for line in reversed(logs.splitlines()):
        line = line.strip()
        if line.startswith("{") and '"run_id"' in line:
            try:
                return {"training": json.loads(line)}
            except json.JSONDecodeError:
                continue
    return {}
