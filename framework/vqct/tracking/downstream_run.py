"""A downstream model's MLflow run, linked to the tokenizer whose codes it read: created in the
tokenizer run's experiment as its child (`mlflow.parentRunId`), so `mlflow ui` shows each
tokenizer's downstream runs under it and compares them across tokenizers by the `vqct.task` tag.
A tokenizer with no run in this store (an exported directory from elsewhere) gets a top-level
run in the experiment `vqct-downstream`, tagged with the tokenizer's digest."""

from __future__ import annotations

import sys
import time

from vqct.tracking.mlflow_run import experiment_id, git_commit

DOWNSTREAM_EXPERIMENT = "vqct-downstream"
TASK_TAG = "vqct.task"


def _parent_experiment(client, run_id: str | None) -> str | None:
    if not run_id:
        return None
    try:
        return client.get_run(run_id).info.experiment_id
    except Exception:  # the tokenizer's run lives in another store
        return None


def log_downstream_run(uri: str, task: str, tokenizer: dict, params: dict, metrics: dict, losses: list[float],
                       texts: dict[str, str], run_name: str) -> str | None:
    """One finished run: PARAMS, numeric METRICS (the rest as tags), the training LOSSES (every
    10th step as train/loss), TEXTS as artifacts.
    Returns the run id, or None with a warning when tracking is down (the results file keeps
    the figures)."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri=uri)
        parent = _parent_experiment(client, tokenizer.get("run_id"))
        experiment = parent or experiment_id(client, DOWNSTREAM_EXPERIMENT, uri)
        tags = {TASK_TAG: task, "vqct.tokenizer_digest": tokenizer["digest"],
                "vqct.tokenizer_recipe": str(tokenizer.get("recipe")), "git_commit": git_commit(),
                **({"mlflow.parentRunId": tokenizer["run_id"], "vqct.tokenizer_run": tokenizer["run_id"]}
                   if parent else {})}
        run_id = client.create_run(experiment, run_name=run_name, tags=tags).info.run_id
        numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        words = [RunTag(f"result.{k}", str(v)[:5000]) for k, v in metrics.items() if k not in numbers]
        now = int(time.time() * 1000)
        curve = [Metric("train/loss", loss, now, step) for step, loss in enumerate(losses) if step % 10 == 0]
        client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in numbers.items()],
                         params=[Param(k, str(v)) for k, v in params.items()], tags=words)
        for start in range(0, len(curve), 1000):  # log_batch takes at most 1,000 metrics a call
            client.log_batch(run_id, metrics=curve[start:start + 1000])
        for name, text in texts.items():
            client.log_text(run_id, text, name)
        client.set_terminated(run_id, "FINISHED")
        return run_id
    except Exception as exc:
        print(f"warning: could not log the {task} run to MLflow at {uri}: {type(exc).__name__}: "
              f"{str(exc)[:200]}", file=sys.stderr)
        return None
