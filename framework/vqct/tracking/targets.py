"""What "a trained tokenizer" may be, for every command that takes one and for
`vqct.load_tokenizer`: one resolver, so that each accepts the same forms.

- a checkpoint directory: runs/<run>/checkpoint_<time> (the whole model, alignment heads included);
- a run directory: runs/<run> (its newest intact checkpoint, as a resumed run takes);
- either in an object store: s3://BUCKET/PREFIX/<run>[/checkpoint_<time>] (pulled into the
  node-local mirror, records/storage.py);
- a run name: <run>, under the default storage (runs/) or as the `vqct.run_name` tag of an
  MLflow run in the tracking store;
- an MLflow run id (32 hex digits): the checkpoint its run was tagged with;
- a registry URI: models:/<recipe>/<version> or models:/<recipe>@<alias> (the version's
  training checkpoint where this machine has it, else its tokenizer directory, downloaded
  through the tracking server);
- an exported tokenizer directory (`vqct export`: config.json + model.safetensors; encoding
  and decoding only).

The tracking store is the explicit one, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
(config.schema.tracking_uri), except where the run directory records its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from vqct.config.schema import TrainerConfig, tracking_uri
from vqct.errors import UserError
from vqct.records.checkpoint_integrity import STATE_FILE, choose_checkpoint, choose_stored_checkpoint
from vqct.records.run_record import RUN_FILE, is_run_dir, read_run
from vqct.records.storage import is_remote, split_run_uri
from vqct.records.tags import RUN_CHECKPOINT_TAG, VERSION_CHECKPOINT_TAG
from vqct.tokenizer.pretrained import CONFIG_FILE

ACCEPTED = ("a checkpoint directory (runs/<run>/checkpoint_<time>), a run directory (runs/<run>), either as "
            "s3://BUCKET/PREFIX/<run>[/checkpoint_<time>], a run name, "
            "an MLflow run id, models:/<name>/<version>, models:/<name>@<alias>, or an exported tokenizer "
            "directory (vqct export)")
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_RUN_NAME_TAG = "vqct.run_name"


@dataclass
class TokenizerTarget:
    """A resolved target. CHECKPOINT: the training checkpoint, where this machine has it;
    EXPORTED: a tokenizer directory; at least one of them is set, or MODEL_URI can fetch one."""
    form: str  # checkpoint | run_dir | run_name | run_id | model_uri | exported
    checkpoint: Path | None = None
    exported: Path | None = None
    run_id: str | None = None
    tracking_uri: str | None = None
    model_uri: str | None = None

    def path(self, heads: bool = True) -> Path:
        """The directory to load: with HEADS, the checkpoint where there is one (alignment heads
        need it); without, a registry version's own tokenizer directory first."""
        if self.exported is None and self.model_uri and (not heads or self.checkpoint is None):
            from vqct.tracking.registry import fetch_tokenizer

            self.exported = fetch_tokenizer(self.model_uri, self.tracking_uri)
        if heads and self.checkpoint is not None:
            return self.checkpoint
        if self.exported is not None:
            return self.exported
        if self.checkpoint is not None:
            return self.checkpoint
        raise UserError(f"{self.model_uri}: its checkpoint is not on this machine and the version holds no "
                        "tokenizer directory; give the checkpoint directory")


def resolve_tokenizer(target: str, uri: str | None = None) -> TokenizerTarget:
    """TARGET in any accepted form -> a TokenizerTarget; one UserError naming the forms if none."""
    target = str(target)
    if target.startswith("models:/"):
        return _from_model_uri(target, uri)
    if is_remote(target):
        return _from_store(target)
    path = Path(target).expanduser()
    if path.is_dir():
        return _from_directory(path, target)
    if _RUN_ID.match(target):
        return _from_run_id(target, tracking_uri(uri), "run_id")
    if "/" not in target and target not in ("", ".", ".."):
        local = Path(TrainerConfig().storage_path) / target
        if is_run_dir(local):
            found = _from_directory(local, target)
            found.form = "run_name"
            return found
        run_id = _run_id_by_name(target, tracking_uri(uri))
        if run_id:
            return _from_run_id(run_id, tracking_uri(uri), "run_name")
    raise UserError(f"{target}: not a trained tokenizer here; give {ACCEPTED}")


def _from_store(target: str) -> TokenizerTarget:
    """s3://BUCKET/PREFIX/RUN[/checkpoint_<time>]: the checkpoint (a run's newest intact one)
    pulled with the run's record into the node-local mirror (records/storage.py)."""
    storage, rel = split_run_uri(target)
    run = rel.split("/")[0]
    storage.pull(f"{run}/{RUN_FILE}")
    if "/" in rel:
        local = storage.pull(rel)
        if not local.is_dir():
            raise UserError(f"{target}: no such checkpoint in the object store")
        return _from_directory(local, target)
    latest, _ = choose_stored_checkpoint(storage, run)
    if latest is None:
        raise UserError(f"{target}: no run with an intact checkpoint there; give s3://BUCKET/PREFIX/RUN")
    found = _from_directory(latest, target)
    found.form = "run_dir"
    return found


def _from_directory(path: Path, target: str) -> TokenizerTarget:
    if (path / CONFIG_FILE).is_file():
        return TokenizerTarget("exported", exported=path.resolve())
    form = "checkpoint"
    if is_run_dir(path):
        latest, _ = choose_checkpoint(path)  # the newest intact one, as a resumed run takes
        if latest is None:
            raise UserError(f"{target}: this run has no intact checkpoint yet")
        path, form = latest, "run_dir"
    if not (path / STATE_FILE).is_file():
        raise UserError(f"{target}: a directory, but not a trained tokenizer; give {ACCEPTED}")
    run = read_run(path.parent) if is_run_dir(path.parent) else {}
    return TokenizerTarget(form, checkpoint=path.resolve(), run_id=run.get("mlflow_run_id"),
                           tracking_uri=run.get("tracking_uri"))


def _store(uri: str, what: str):
    """An MlflowClient on URI, or a UserError when a local store is missing (MLflow would create one)."""
    from mlflow.tracking import MlflowClient

    from vqct.tracking.mlflow_run import absolute_uri

    uri = absolute_uri(uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise UserError(f"{what}: no tracking store at {uri}; pass --tracking-uri, set MLFLOW_TRACKING_URI, "
                        "or give the checkpoint directory")
    return MlflowClient(tracking_uri=uri), uri


def _run_id_by_name(name: str, uri: str) -> str | None:
    try:
        client, _ = _store(uri, name)
        experiments = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(experiments, f"tags.`{_RUN_NAME_TAG}` = '{name}'", max_results=1,
                                  order_by=["attributes.start_time DESC"]) if experiments else []
    except UserError:
        return None
    return runs[0].info.run_id if runs else None


def _from_run_id(run_id: str, uri: str, form: str) -> TokenizerTarget:
    client, uri = _store(uri, f"MLflow run {run_id}")
    try:
        run = client.get_run(run_id)
    except Exception as exc:
        raise UserError(f"MLflow run {run_id} not found at {uri} ({type(exc).__name__}); pass "
                        "--tracking-uri or a checkpoint directory") from None
    checkpoint = run.data.tags.get(RUN_CHECKPOINT_TAG)
    if not checkpoint:  # runs stopped early: the newest intact checkpoint in their run directory
        storage, name = run.data.params.get("trainer.storage_path"), run.data.tags.get(_RUN_NAME_TAG)
        latest = choose_checkpoint(Path(storage) / name)[0] if storage and name else None
        checkpoint = str(latest) if latest else None
    if checkpoint and is_remote(checkpoint):  # a run whose storage is an object store
        found = _from_store(checkpoint)
        found.form, found.run_id, found.tracking_uri = form, run_id, uri
        return found
    if not checkpoint or not Path(checkpoint).is_dir():
        raise UserError(f"MLflow run {run_id}: its checkpoint ({checkpoint}) is not on this machine; "
                        "pass the checkpoint directory instead")
    return TokenizerTarget(form, checkpoint=Path(checkpoint), run_id=run_id, tracking_uri=uri)


def _from_model_uri(model_uri: str, uri: str | None) -> TokenizerTarget:
    from vqct.tracking.registry import registered_version

    version, uri = registered_version(model_uri, uri)
    checkpoint = version.tags.get(VERSION_CHECKPOINT_TAG)
    if not checkpoint and not str(version.source).startswith("models:/"):
        checkpoint = version.source  # a version registered before versions held a logged model
    local = Path(checkpoint) if checkpoint and Path(checkpoint).is_dir() else None
    if local is None and not str(version.source).startswith("models:/"):
        raise UserError(f"{model_uri}: version {version.version}'s checkpoint {checkpoint} is not on this "
                        "machine (checkpoints live on storage the readers share)")
    return TokenizerTarget("model_uri", checkpoint=local, run_id=version.run_id, tracking_uri=uri,
                           model_uri=model_uri)
