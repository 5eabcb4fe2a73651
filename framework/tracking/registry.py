"""The recipe registry in MLflow's Model Registry: one registered model per recipe, one
version per finished training run (tagged with its checkpoint directory), and the alias
`best` on the version whose `vqct eval` scored best on the chosen metric.

`models:/<recipe>@best`, `@latest` or `/<version>` resolves to a checkpoint directory that
vqct.load_tokenizer reads; checkpoints live on storage the readers share. MLflow reserves
the alias name `latest` (its own models:/<name>/latest means the newest version), so
`@latest` is resolved here by that same rule rather than stored as an alias.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from vqct.config.schema import Config
from vqct.errors import UserError
from vqct.records.checkpoint_integrity import STATE_FILE
from vqct.records.tags import VERSION_CHECKPOINT_TAG
LOWER_IS_BETTER = {"l1", "val_l1", "rfid", "code_word_mse", "lgvq_ras_mse"}
_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+|latest))$")


def default_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")


def register_run(uri: str, run_id: str, cfg: Config, checkpoint: str | None) -> str | None:
    """Register RUN_ID's checkpoint as a new version of the recipe's model. Returns the version,
    or None (with a warning) when the registry is unreachable."""
    if not checkpoint:
        return None
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from vqct.config.compose import config_hash
    from vqct.tracking.mlflow_run import git_commit

    name = cfg.recipe
    try:
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        try:
            client.create_registered_model(name, tags={"family": cfg.family},
                                           description=f"vqct tokenizers trained with recipe {name}")
        except MlflowException as exc:
            if "already exists" not in str(exc).lower():
                raise
        tags = {"config_hash": config_hash(cfg), "git_commit": git_commit(), "family": cfg.family,
                "quantizer": cfg.quantizer.name, VERSION_CHECKPOINT_TAG: checkpoint}
        # An MLflow server accepts run-artifact sources only, not local paths: the version points
        # at the run's tokenizer/ artifact (the resolved config) and its tag at the checkpoint.
        client.log_artifact(run_id, str(Path(checkpoint) / STATE_FILE), "tokenizer")
        version = client.create_model_version(name, source=f"runs:/{run_id}/tokenizer", run_id=run_id,
                                              tags=tags).version
        return str(version)
    except Exception as exc:  # the registry must never turn a finished training into a failure
        print(f"warning: could not register run {run_id} in the model registry: {exc}", file=sys.stderr)
        return None


def resolve_model_uri(model_uri: str, uri: str | None = None) -> str:
    """models:/NAME@ALIAS or models:/NAME/VERSION -> the version's checkpoint directory."""
    from mlflow.tracking import MlflowClient

    match = _MODEL_URI.match(model_uri)
    if not match:
        raise UserError(f"{model_uri}: give models:/<recipe>@<alias> or models:/<recipe>/<version>")
    uri = uri or default_uri()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        if "latest" in (match["alias"], match["version"]):
            version = max(client.search_model_versions(f"name='{match['name']}'"), key=lambda v: int(v.version))
        elif match["alias"]:
            version = client.get_model_version_by_alias(match["name"], match["alias"])
        else:
            version = client.get_model_version(match["name"], match["version"])
    except Exception as exc:
        raise UserError(f"{model_uri}: not in the model registry at {uri} ({type(exc).__name__}); "
                        "set MLFLOW_TRACKING_URI, or train and evaluate the recipe first") from None
    checkpoint = version.tags.get(VERSION_CHECKPOINT_TAG) or version.source
    if not Path(checkpoint).is_dir():
        raise UserError(f"{model_uri}: version {version.version}'s checkpoint {checkpoint} is not on this "
                        "machine (checkpoints live on storage the readers share)")
    return checkpoint


def _score(client, version, metric: str) -> float | None:
    value = client.get_run(version.run_id).data.metrics.get(f"eval/{metric}") if version.run_id else None
    return None if value is None or value != value else value


def promote_if_best(uri: str, run_id: str, recipe: str, metric: str) -> dict:
    """After `vqct eval` of RUN_ID: move alias `best` to its version when it beats the holder."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        mine = [v for v in client.search_model_versions(f"name='{recipe}'") if v.run_id == run_id]
    except Exception:
        return {"registered": False}
    if not mine:
        return {"registered": False}
    version = max(mine, key=lambda v: int(v.version))
    score = _score(client, version, metric)
    try:
        holder = client.get_model_version_by_alias(recipe, "best")
    except Exception:
        holder = None
    held = _score(client, holder, metric) if holder is not None else None
    lower = metric in LOWER_IS_BETTER
    better = score is not None and (held is None or (score < held if lower else score > held))
    if better or (holder is not None and str(holder.version) == str(version.version)):
        client.set_registered_model_alias(recipe, "best", version.version)
        return {"registered": True, "version": str(version.version), "best": True, "metric": metric}
    return {"registered": True, "version": str(version.version), "best": False, "metric": metric,
            "best_version": str(holder.version) if holder is not None else None}
