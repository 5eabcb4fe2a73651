"""The recipe registry in MLflow's Model Registry: one registered model per recipe, one
version per finished training run (tagged with its checkpoint directory), and the alias
`best` on the version whose `vqct eval` scored best on the chosen metric.

Each version is the run's logged MLflow model (`logged_model.py`: a pyfunc around the
tokenizer directory) and is tagged with the run's checkpoint directory. `vqct.load_tokenizer`
of `models:/<recipe>@best`, `@latest` or `/<version>` downloads the tokenizer directory
through the tracking server (nothing of the run's storage needed). MLflow reserves
the alias name `latest` (its own models:/<name>/latest means the newest version), so
`@latest` is resolved here by that same rule rather than stored as an alias.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from vqct.config.schema import Config, tracking_uri
from vqct.errors import UserError
from vqct.records.tags import VERSION_CHECKPOINT_TAG
LOWER_IS_BETTER = {"l1", "val_l1", "object_l1", "rfid", "code_word_mse", "lgvq_ras_mse"}
_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+|latest))$")


def register_run(uri: str, run_id: str, cfg: Config, checkpoint: str | None) -> str | None:
    """Log RUN_ID's tokenizer (from its final CHECKPOINT) as the run's MLflow model and register
    it as a new version of the recipe's model. Returns the version, or None with one warning:
    the registry must never turn a finished training into a failure."""
    return _never_failing(_register, uri, run_id, cfg, checkpoint)


def _never_failing(register, uri: str, run_id: str, cfg, checkpoint: str | None) -> str | None:
    if not checkpoint:
        return None
    try:
        return register(uri, run_id, cfg, checkpoint)
    except Exception as exc:
        first = str(exc).splitlines()[0][:300] if str(exc) else ""
        print(f"warning: could not register run {run_id} in the model registry ({type(exc).__name__}: {first}); "
              f"the run stays FINISHED and its checkpoint is {checkpoint}", file=sys.stderr)
        return None


def _register(uri: str, run_id: str, cfg: Config, checkpoint: str) -> str:
    import tempfile

    from vqct.tokenizer.pretrained import export

    with tempfile.TemporaryDirectory() as scratch:
        exported = export(checkpoint, str(Path(scratch) / "tokenizer"))
        return register_tokenizer(uri, run_id, cfg, Path(exported["out"]), {VERSION_CHECKPOINT_TAG: checkpoint})


def register_generator(uri: str, run_id: str, cfg, checkpoint: str | None) -> str | None:
    """A generator run's model (captions or class maps in, images out) as a new version of its
    recipe's registered model; None with one warning when that fails, as for tokenizers."""
    return _never_failing(_register_generator, uri, run_id, cfg, checkpoint)


def _register_generator(uri: str, run_id: str, cfg, checkpoint: str) -> str:
    import tempfile

    from mlflow.tracking import MlflowClient

    from vqct.config.compose import config_hash
    from vqct.stage2.pretrained import export_generator
    from vqct.tracking.generator_model import log_generator_model
    from vqct.tracking.logged_model import tracking_store
    from vqct.tracking.mlflow_run import git_commit

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    _ensure_registered_model(client, cfg.recipe, cfg.family, "vqct generators trained with recipe")
    with tempfile.TemporaryDirectory() as scratch:
        model_id = log_generator_model(uri, run_id, export_generator(checkpoint, Path(scratch) / "generator"))
    tags = {"config_hash": config_hash(cfg), "git_commit": git_commit(), "family": cfg.family,
            "condition": cfg.condition.name, VERSION_CHECKPOINT_TAG: checkpoint}
    with tracking_store(uri):
        version = client.create_model_version(cfg.recipe, source=f"models:/{model_id}", run_id=run_id, tags=tags,
                                              model_id=model_id)
    return str(version.version)


def _ensure_registered_model(client, name: str, family: str, what: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, tags={"family": family}, description=f"{what} {name}")
    except MlflowException as exc:
        if "already exists" not in str(exc).lower():
            raise


def register_tokenizer(uri: str, run_id: str, cfg: Config, tokenizer_dir: Path, tags: dict) -> str:
    """Log TOKENIZER_DIR as RUN_ID's MLflow model, and register that as a new version of the
    recipe's model (created when missing) with TAGS. Returns the version."""
    from mlflow.tracking import MlflowClient

    from vqct.config.compose import config_hash
    from vqct.tokenizer.pretrained import read_config
    from vqct.tracking.logged_model import log_tokenizer_model, tracking_store
    from vqct.tracking.mlflow_run import git_commit

    name = cfg.recipe
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    _ensure_registered_model(client, name, cfg.family, "vqct tokenizers trained with recipe")
    model_id = log_tokenizer_model(uri, run_id, tokenizer_dir, cfg.data.image_size)
    tags = {"config_hash": config_hash(cfg), "git_commit": git_commit(), "family": cfg.family,
            "quantizer": cfg.quantizer.name, "codes": str(read_config(tokenizer_dir)[1]["codes"]), **tags}
    with tracking_store(uri):  # the registry resolves models:/<id> through the fluent tracking URI
        version = client.create_model_version(name, source=f"models:/{model_id}", run_id=run_id, tags=tags,
                                              model_id=model_id)
    return str(version.version)


def registered_version(model_uri: str, uri: str | None):
    """models:/NAME@ALIAS, models:/NAME/VERSION or @latest -> (the model version, the store's uri)."""
    from mlflow.tracking import MlflowClient

    match = _MODEL_URI.match(model_uri)
    if not match:
        raise UserError(f"{model_uri}: give models:/<recipe>@<alias> or models:/<recipe>/<version>")
    uri = tracking_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        if "latest" in (match["alias"], match["version"]):
            return max(client.search_model_versions(f"name='{match['name']}'"), key=lambda v: int(v.version)), uri
        if match["alias"]:
            return client.get_model_version_by_alias(match["name"], match["alias"]), uri
        return client.get_model_version(match["name"], match["version"]), uri
    except Exception as exc:
        raise UserError(f"{model_uri}: not in the model registry at {uri} ({type(exc).__name__}); "
                        "set MLFLOW_TRACKING_URI, or train and evaluate the recipe first") from None


def fetch_tokenizer(model_uri: str, uri: str | None = None) -> Path | None:
    """models:/... -> a local copy of the version's tokenizer directory, downloaded through the
    tracking server; None for a version registered before versions held a logged model."""
    from vqct.tracking.logged_model import TOKENIZER_ARTIFACT

    return _fetch_artifact(model_uri, uri, TOKENIZER_ARTIFACT)


def fetch_generator(model_uri: str, uri: str | None = None) -> Path:
    """models:/<generator recipe>/... -> a local copy of the version's generator directory."""
    from vqct.tracking.generator_model import GENERATOR_ARTIFACT

    local = _fetch_artifact(model_uri, uri, GENERATOR_ARTIFACT)
    if local is None:
        raise UserError(f"{model_uri}: this version holds no generator model; give a generator recipe's version")
    return local


def _fetch_artifact(model_uri: str, uri: str | None, artifact: str) -> Path | None:
    from mlflow.artifacts import download_artifacts
    from mlflow.models import Model

    from vqct.tracking.logged_model import tracking_store

    version, uri = registered_version(model_uri, uri)
    if not str(version.source).startswith("models:/"):
        return None
    with tracking_store(uri):
        local = Path(download_artifacts(artifact_uri=f"models:/{version.name}/{version.version}"))
    artifacts = Model.load(str(local)).flavors["python_function"]["artifacts"]
    return local / artifacts[artifact]["path"] if artifact in artifacts else None


def _score(client, version, metric: str) -> float | None:
    value = client.get_run(version.run_id).data.metrics.get(f"eval/{metric}") if version.run_id else None
    return None if value is None or value != value else value


def promote_if_best(uri: str, run_id: str, recipe: str, metric: str, promote: bool = True) -> dict:
    """After `vqct eval` of RUN_ID: move alias `best` to its version when it beats the holder
    (PROMOTE=False: only say whether it would). `moved_from`: the version that held it."""
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
    holds = holder is not None and str(holder.version) == str(version.version)
    out = {"registered": True, "version": str(version.version), "metric": metric,
           "best_version": str(holder.version) if holder is not None else None}
    if not promote:
        return {**out, "best": holds, "would_move": better and not holds, "promotion": "off"}
    if better or holds:
        client.set_registered_model_alias(recipe, "best", version.version)
        return {**out, "best": True, "moved": not holds, "best_version": str(version.version),
                "moved_from": out["best_version"] if not holds else None}
    return {**out, "best": False, "moved": False}


def describe_promotion(recipe: str, registry: dict) -> str:
    """One line for the terminal: what `vqct eval` did to the `best` alias."""
    if not registry.get("registered"):
        return f"registry: this run is not a version of model {recipe}; no alias moved"
    version, metric, holder = registry["version"], registry["metric"], registry["best_version"]
    if registry.get("promotion") == "off":
        verdict = f"would move it to version {version}" if registry["would_move"] else "would leave it"
        return f"registry: promotion off; best stays on version {holder} ({metric} {verdict})"
    if not registry["moved"]:
        why = "already this run's version" if registry["best"] else f"version {version} is not better on {metric}"
        return f"registry: best stays on {recipe} version {holder} ({why})"
    was = f"version {registry['moved_from']}" if registry["moved_from"] else "no version"
    return f"registry: best moved to {recipe} version {version} from {was} (by {metric})"
