"""`vqct train` on the driver: check inputs, open the MLflow run, run Ray Train workers,
and return the run's figures.

Everything that can be wrong with the user's input is checked here, before any worker
starts: shards, reader counts, the Ray address, the run to resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import sys
from pathlib import Path

from vqct.config.compose import config_hash
from vqct.config.generator import GeneratorConfig
from vqct.config.schema import Config, VQCTConfig
from vqct.data.shards import check_reader_count, drop_empty, resolve_shards
from vqct.errors import TrainingFailed, UserError
from vqct.launch.cluster_watch import ClusterWatch
from vqct.launch.ray_connect import connect
from vqct.launch.runs import RAY_SNAPSHOT, choose_run, repair_ray_snapshot
from vqct.launch.signals import interrupt_on_sigterm, on_stop_signal
from vqct.records.checkpoint_integrity import newest_stored_checkpoint
from vqct.records.code_manifest import MANIFEST, TOKENIZER_DIR, same_tokenizer
from vqct.records.run_record import PRIORS_DIR, RUN_FILE, STOP_FILE, take_stop, write_run
from vqct.records.storage import Storage, is_remote, local_copy, run_storage, store_env
from vqct.tracking.mlflow_run import (absolute_uri, close_run, log_config_copy, log_start_metrics, open_run,
                                      tag_checkpoint, worker_env)
from vqct.tracking.datasets import log_shard_sets
from vqct.tracking.registry import register_generator, register_run
from vqct.train.spec import GeneratorSummary, RunSummary, WorkerSpec


def _worker_env(cfg: Config | GeneratorConfig) -> dict[str, str]:
    env = {
        "OMP_NUM_THREADS": str(cfg.trainer.cpus_per_worker),
        "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
    }
    if not cfg.trainer.use_gpu:
        env["DS_ACCELERATOR"] = "cpu"  # no GPU probing (and its warning) on CPU workers
    env.update(worker_env())
    env.update(store_env())
    return env


def _trainer(cfg: Config | GeneratorConfig, spec: WorkerSpec, run_name: str, storage: Storage):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if isinstance(cfg, GeneratorConfig):
        from vqct.train.generator_loop import generator_loop_per_worker as loop
    else:
        from vqct.train.loop import train_loop_per_worker as loop

    t = cfg.trainer
    return TorchTrainer(
        loop,
        train_loop_config={"spec": spec},
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                     resources_per_worker={"CPU": t.cpus_per_worker}),
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
        run_config=RunConfig(name=run_name, **storage.ray_storage(),
                             checkpoint_config=CheckpointConfig(num_to_keep=t.keep_checkpoints),
                             # A lost worker restarts the whole group from the last checkpoint.
                             failure_config=FailureConfig(max_failures=t.max_failures)),
    )


def train(cfg: Config | GeneratorConfig) -> dict:
    """Train CFG; returns the RunSummary's JSON (the command's final line)."""
    if isinstance(cfg, GeneratorConfig):
        return _train_generator(cfg)
    d = cfg.data
    train_urls, val_urls, missing, empty = _shard_sets(cfg, d.train_shards, d.val_shards or d.train_shards,
                                                       "data.train_shards", "data.val_shards")
    storage, run_name, previous = _run_place(cfg)
    priors_dir = None
    if isinstance(cfg.quantizer, VQCTConfig):  # built once here, loaded by every worker
        from vqct.text.priors import ensure_priors

        path, manifest, built = ensure_priors(cfg, train_urls)
        priors_dir = _share_dir(path, storage, run_name, PRIORS_DIR)
        print(f"priors {'built' if built else 'reused'}: {path} ({manifest['report']})", file=sys.stderr)

    spec = WorkerSpec(cfg, "", storage.uri(run_name), train_urls, val_urls, priors_dir)
    return _connect_and_fit(spec, storage, previous, len(missing), len(empty))


def _shard_sets(cfg, train, val, train_key: str, val_key: str) -> tuple[list[str], list[str], list[str], list[str]]:
    """(train urls, val urls, missing train shards, empty train shards), each set checked
    against the readers the run will have."""
    t, d = cfg.trainer, cfg.data
    missing: list[str] = []
    train_urls, empty = drop_empty(resolve_shards(train, train_key, missing), train_key)
    check_reader_count(train_urls, t.num_workers, d.num_workers, train_key)
    val_urls, _ = drop_empty(resolve_shards(val, val_key), val_key)
    check_reader_count(val_urls, t.num_workers, d.num_workers, val_key)
    return train_urls, val_urls, missing, empty


def _share_dir(source: str | Path, storage: Storage, run_name: str, rel: str) -> str:
    """Where the workers find a directory the run reads (the text priors, a code set's
    tokenizer): where it is, or on an object store a copy in the run at REL (a worker on
    another node cannot read the driver's disk, and the run keeps what it was made from)."""
    if not storage.remote:
        return str(source)
    shutil.copytree(local_copy(str(source)), storage.local / run_name / rel, dirs_exist_ok=True)
    storage.push(f"{run_name}/{rel}")
    return storage.uri(f"{run_name}/{rel}")


def _run_place(cfg) -> tuple[Storage, str, dict | None]:
    """(storage, run name, the recorded run when resuming); the tracking URI made absolute."""
    t = cfg.trainer
    cfg.tracking.uri = absolute_uri(cfg.tracking.uri)
    storage = Storage(t.storage_path)
    if storage.remote:  # the records choose_run reads, into the mirror
        names = [t.run_name] if t.run_name else storage.list_dirs() if t.resume else []
        for name in names:
            storage.pull(f"{name}/{RUN_FILE}")
    run_name, previous = choose_run(storage.local, cfg.recipe, t.run_name, t.resume)
    if previous:
        snapshot = f"{run_name}/{RAY_SNAPSHOT}"
        storage.pull(snapshot)
        aside = repair_ray_snapshot(storage.local / run_name, storage.list_dirs(run_name))
        if aside and storage.remote:
            storage.push(f"{run_name}/{aside.name}")
            storage.delete(snapshot)
    return storage, run_name, previous


def _connect_and_fit(spec: WorkerSpec, storage: Storage, previous: dict | None, missing: int, empty: int) -> dict:
    t = spec.config.trainer
    connected = connect(t.num_workers * t.cpus_per_worker, _worker_env(spec.config))
    interrupt_on_sigterm()
    try:
        return _fit(spec, storage, previous, missing, empty).to_json()
    finally:
        if connected:  # also drains the workers' forwarded logs before the final JSON line
            import ray

            ray.shutdown()


def _train_generator(cfg: GeneratorConfig) -> dict:
    """A stage-2 run: the code sets must share one tokenizer (records/code_manifest.py)."""
    d = cfg.data
    train, val = _code_sets(d.train_codes, "data.train_codes"), _code_sets(d.val_codes, "data.val_codes")
    identity = same_tokenizer([local for _, local in train + val])
    train_urls, val_urls, missing, empty = _shard_sets(cfg, [where for where, _ in train], [where for where, _ in val],
                                                       "data.train_codes", "data.val_codes")
    storage, run_name, previous = _run_place(cfg)
    tokenizer = _share_dir(f"{train[0][0]}/{TOKENIZER_DIR}", storage, run_name, TOKENIZER_DIR)
    code_set = {"layout": identity["layout"], "digest": identity["digest"], "tokenizer_dir": tokenizer}
    spec = WorkerSpec(cfg, "", storage.uri(run_name), train_urls, val_urls, code_set=code_set)
    return _connect_and_fit(spec, storage, previous, len(missing), len(empty))


def _code_sets(spec, what: str) -> list[tuple[str, Path]]:
    """Code-shard directories (each with the manifest `vqct data tokenize` wrote), local or
    s3://BUCKET/PREFIX: (where the readers find it, a local directory holding its manifest)."""
    found = []
    for directory in [spec] if isinstance(spec, str) else list(spec or []):
        where = directory.rstrip("/") if is_remote(directory) else str(Path(directory).resolve())
        local = local_copy(f"{where}/{MANIFEST}").parent
        if not (local / MANIFEST).is_file():
            raise UserError(f"{what}: {directory} is not a code-shard directory (no {MANIFEST}); make one with "
                            "`vqct data tokenize TOKENIZER SHARDS --out DIR`")
        found.append((where, local))
    return found


def _where_to_resume(storage: Storage, run_name: str) -> str:
    checkpoint = newest_stored_checkpoint(storage, run_name)
    kept = (f"last intact checkpoint {storage.uri(f'{run_name}/{checkpoint}')}" if checkpoint
            else "no checkpoint was saved yet")
    return f"{kept}; resume with trainer.resume=true trainer.run_name={run_name}"


def _take_stop(storage: Storage, run_name: str) -> dict | None:
    storage.pull(f"{run_name}/{STOP_FILE}")
    stop = take_stop(storage.local / run_name)
    storage.delete(f"{run_name}/{STOP_FILE}")
    return stop


def _worker_errors(exc: BaseException) -> str:
    """The workers' own exceptions, one line each, instead of Ray's truncated tracebacks."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RaySystemError

    lost, seen = exc, set()
    while lost is not None and id(lost) not in seen:  # the error itself, or what caused it
        if isinstance(lost, (ActorDiedError, ActorUnavailableError, RaySystemError)):
            # The head (or the training controller's node) went away under the driver.
            first = str(lost).splitlines()[0][:160] if str(lost) else ""
            return f"lost contact with the Ray cluster ({type(lost).__name__}: {first})"
        seen.add(id(lost))
        lost = lost.__cause__ or lost.__context__
    failures = getattr(exc, "worker_failures", None)
    if not failures:
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return "; ".join(f"rank {rank}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                     for rank, err in sorted(failures.items()))


def _tell_job_script(run_dir: Path) -> None:
    """Where the run lives, for a job script's teardown: `vqct mark-killed` then closes an MLflow
    run that the driver could not (cluster/slurm/vqct_ray.sbatch sets VQCT_RUN_DIR_FILE). On an
    object store: the mirror, which holds the run record mark-killed reads."""
    pointer = os.environ.get("VQCT_RUN_DIR_FILE")
    if pointer:
        Path(pointer).write_text(str(run_dir.resolve()))


class _NoWatch(contextlib.nullcontext):
    lost = None


def _cluster_watch(t) -> ClusterWatch | _NoWatch:
    """Only a cluster of its own (RAY_ADDRESS) can lose a node; the embedded instance is this
    machine."""
    if not os.environ.get("RAY_ADDRESS"):
        return _NoWatch()
    return ClusterWatch(t.num_workers * t.cpus_per_worker, t.num_workers if t.use_gpu else 0, t.node_wait_s)


def _fit(spec: WorkerSpec, storage: Storage, previous: dict | None, missing_shards: int,
         empty_shards: int) -> RunSummary | GeneratorSummary:
    """Open (or reopen) the MLflow run, run the workers, close the run, register the model.
    SPEC's MLflow run id is filled in here."""
    cfg, run_name = spec.config, run_storage(spec.run_dir)[1]
    uri = cfg.tracking.uri
    try:
        run_id = open_run(cfg, run_name, previous["mlflow_run_id"] if previous else None)
    except Exception as exc:  # no run to log into yet: refuse to start rather than train blind
        raise UserError(f"tracking.uri={uri}: could not open the MLflow run "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); start the "
                        "tracking server or point tracking.uri at a reachable store") from None
    if previous:
        log_config_copy(uri, run_id, cfg, f"resolved_resume_to_step{cfg.trainer.max_steps}.yaml")
    write_run(storage.local / run_name, {"mlflow_run_id": run_id, "recipe": cfg.recipe,
                                         "config_hash": config_hash(cfg), "tracking_uri": uri})
    storage.push(f"{run_name}/{RUN_FILE}")
    _tell_job_script(storage.local / run_name)
    if not previous:  # once per run: step 0 has one value
        log_start_metrics(uri, run_id, {"data/missing_shards": missing_shards, "data/empty_shards": empty_shards,
                                        "data/train_shards": len(spec.train_urls)})
        log_shard_sets(uri, run_id, cfg.recipe, spec.train_urls, spec.val_urls)
    print(f"run {run_name}: MLflow run {run_id} at {uri}", file=sys.stderr)
    _take_stop(storage, run_name)  # a stop left by an earlier attempt is history now
    spec = dataclasses.replace(spec, mlflow_run_id=run_id)
    watch = _cluster_watch(cfg.trainer)
    try:
        with on_stop_signal(lambda: close_run(uri, run_id, "KILLED")), watch:
            result = _trainer(cfg, spec, run_name, storage).fit()
    except BaseException as exc:
        # Ctrl-C inside fit() meets Ray Train's own SIGINT handler, which aborts the workers
        # gracefully and then exits (SystemExit); SIGTERM arrives as KeyboardInterrupt.
        interrupted = isinstance(exc, (KeyboardInterrupt, SystemExit))
        if watch.lost:  # the watch stopped it: a failure, not the user's stop
            close_run(uri, run_id, "FAILED")
            raise TrainingFailed(f"training run {run_name} stopped: {watch.lost}; "
                                 f"{_where_to_resume(storage, run_name)}") from None
        close_run(uri, run_id, "KILLED" if interrupted else "FAILED")
        if interrupted:
            print(f"stopped: {_where_to_resume(storage, run_name)}", file=sys.stderr)
            raise KeyboardInterrupt from None
        raise TrainingFailed(f"training run {run_name} failed: {_worker_errors(exc)}; "
                             f"{_where_to_resume(storage, run_name)}") from exc
    stopped = _take_stop(storage, run_name)
    if stopped:
        close_run(uri, run_id, "FAILED")
        raise TrainingFailed(f"training run {run_name} stopped at step {stopped['step']}: {stopped['reason']}; "
                             f"{_where_to_resume(storage, run_name)}")
    close_run(uri, run_id, "FINISHED")
    checkpoint, local = None, None
    if result.checkpoint:  # Ray's path is the store's key on an object store: name it and pull it
        name = Path(result.checkpoint.path).name
        checkpoint = storage.uri(f"{run_name}/{name}") if storage.remote else result.checkpoint.path
        local = str(storage.pull(f"{run_name}/{name}")) if storage.remote else checkpoint
    tag_checkpoint(uri, run_id, checkpoint)
    if isinstance(cfg, GeneratorConfig):
        summary, version = GeneratorSummary.from_json(result.metrics or {}), register_generator(uri, run_id, cfg,
                                                                                                 local)
    else:
        summary, version = RunSummary.from_json(result.metrics or {}), register_run(uri, run_id, cfg, local)
    return dataclasses.replace(summary, run_id=run_id, run_name=run_name, recipe=cfg.recipe, family=cfg.family,
                               seed=cfg.seed, checkpoint=checkpoint, model_version=version, tracking_uri=uri)
