"""Driver side: create or reopen the MLflow run of a training run, with params and tags.

The run is opened on the driver so that its id is known before any worker starts, is
stored beside the Ray Train checkpoints, and is reused when the run resumes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from vqct.config.compose import config_hash, flatten, to_yaml
from vqct.config.schema import Config
from vqct.records.tags import RUN_CHECKPOINT_TAG
_PARAM_MAX = 6000  # MLflow's limit on a param value's length


def git_commit() -> str:
    repo = Path(__file__).resolve().parents[3]
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def sqlite_artifact_root(uri: str) -> str | None:
    """For a sqlite store, artifacts go in `mlartifacts/` beside the database file."""
    if not uri.startswith("sqlite:///"):
        return None
    db_path = Path(uri[len("sqlite:///"):])  # "mlflow.db" or "/abs/mlflow.db" (sqlite:////abs)
    return (db_path.resolve().parent / "mlartifacts").as_uri()


def absolute_uri(uri: str) -> str:
    """Relative sqlite paths are resolved on the driver, so workers write to the same file."""
    if uri.startswith("sqlite:///"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    if "://" not in uri:
        return Path(uri).resolve().as_uri()
    return uri


def experiment_id(client, name: str, uri: str) -> str:
    """The id of experiment NAME, created (artifacts beside a sqlite store) when missing."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=sqlite_artifact_root(uri))


def open_run(cfg: Config, run_name: str, resume_run_id: str | None = None) -> str:
    """Create the MLflow run (or reopen RESUME_RUN_ID); returns its id."""
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = cfg.tracking.uri
    client = MlflowClient(tracking_uri=uri)
    if resume_run_id:
        client.update_run(resume_run_id, status="RUNNING")
        client.set_tag(resume_run_id, "vqct.resumed", "true")
        return resume_run_id
    experiment = experiment_id(client, cfg.tracking.experiment, uri)
    tags = {
        "recipe": cfg.recipe,
        "family": cfg.family,
        # a generator's codes come from its code set's tokenizer: its tag is the condition
        **({"quantizer": cfg.quantizer.name} if hasattr(cfg, "quantizer") else {"condition": cfg.condition.name}),
        "git_commit": git_commit(),
        "config_hash": config_hash(cfg),
        "vqct.run_name": run_name,
        "mlflow.runName": run_name,
    }
    run = client.create_run(experiment, tags=tags, run_name=run_name)
    run_id = run.info.run_id
    params = [mlflow.entities.Param(k, str(v)[:_PARAM_MAX]) for k, v in flatten(cfg).items()]
    for start in range(0, len(params), 100):  # log_batch takes at most 100 params a call
        client.log_batch(run_id, params=params[start:start + 100])
    client.log_text(run_id, to_yaml(cfg), "config/resolved.yaml")
    _log_recipe_file(client, run_id, cfg.recipe)
    return run_id


def _log_recipe_file(client, run_id: str, recipe: str) -> None:
    """The recipe as written (config/recipe/<name>.yaml), beside the resolved config."""
    from vqct.config.compose import locate_recipe
    from vqct.errors import UserError

    try:
        client.log_artifact(run_id, str(locate_recipe(recipe)), "config/recipe")
    except UserError:
        print(f"warning: recipe file of {recipe} not found; only the resolved config is logged", file=sys.stderr)


def close_run(uri: str, run_id: str, status: str) -> None:
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(tracking_uri=uri).set_terminated(run_id, status=status)
    except Exception as exc:  # tracking must never turn a finished training into a failure
        print(f"warning: could not mark MLflow run {run_id} {status}: {exc}", file=sys.stderr)


def mark_killed_if_running(uri: str, run_id: str) -> str:
    """Mark RUN_ID KILLED if it is still RUNNING; returns the status it had.

    For a run whose driver died without closing it (SIGKILL, a lost node, or SLURM's scancel
    ending the driver through its raylet before the driver's own mark was written): a job
    script's teardown calls it once every process of the run has stopped."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    status = client.get_run(run_id).info.status
    if status == "RUNNING":
        client.set_terminated(run_id, status="KILLED")
    return status


def tag_checkpoint(uri: str, run_id: str, path: str | None) -> None:
    """Record the run's final checkpoint, so that `vqct eval RUN_ID` finds it."""
    if not path:
        return
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(tracking_uri=uri).set_tag(run_id, RUN_CHECKPOINT_TAG, path)
    except Exception as exc:
        print(f"warning: could not tag MLflow run {run_id} with its checkpoint: {exc}", file=sys.stderr)


def log_start_metrics(uri: str, run_id: str, metrics: dict[str, float]) -> None:
    """Figures the driver knows before training (shards found, shards missing), at step 0."""
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri=uri)
        for key, value in metrics.items():
            client.log_metric(run_id, key, float(value), step=0)
    except Exception as exc:
        print(f"warning: could not log {', '.join(metrics)} to MLflow: {exc}", file=sys.stderr)


def log_config_copy(uri: str, run_id: str, cfg: Config, name: str) -> None:
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(tracking_uri=uri).log_text(run_id, to_yaml(cfg), f"config/{name}")
    except Exception as exc:
        print(f"warning: could not log {name} to MLflow: {exc}", file=sys.stderr)


def worker_env() -> dict:
    """MLflow settings for workers: fail fast on a dead server instead of retrying for minutes."""
    return {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1"),
        "MLFLOW_HTTP_REQUEST_TIMEOUT": os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "10"),
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
