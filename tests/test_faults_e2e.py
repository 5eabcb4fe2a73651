"""Faults during real training runs (Ray Train, 2 DeepSpeed workers, MLflow sqlite store):
a worker killed mid-run, the driver stopped by SIGTERM, a damaged latest checkpoint at
resume, shards full of broken samples, a lost head, a lost node of two."""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from conftest import REPO, vqct_cmd
from fault_corpus import EXPECTED_SKIPS, write_fault_corpus
from servers import raylet_pid, s3_env, start_ray_head, start_ray_node, start_s3_server, stop
from vqct.records.checkpoint_integrity import DamagedCheckpoint, verify_checkpoint
from vqct.records.command_output import last_json

pytestmark = pytest.mark.e2e


def _args(tmp_path, train, val, *overrides):
    return ["train", "vqgan_shapes", f"data.train_shards={train}", f"data.val_shards={val}",
            "data.batch_size=8", "data.val_batches=1", "loss.disc_start=1000", "trainer.image_every=1000",
            f"trainer.storage_path={tmp_path}/runs", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
            "tracking.experiment=faults", "trainer.log_every=5", "optim.warmup_steps=0", *overrides]


def _env(extra: dict | None = None):
    return dict(os.environ, PYTHONPATH=str(REPO), **(extra or {}))


def _start(tmp_path, *args, env: dict | None = None) -> subprocess.Popen:
    log = open(tmp_path / "train.log", "w")
    return subprocess.Popen(vqct_cmd() + list(args), stdout=subprocess.PIPE, stderr=log, text=True,
                            cwd=tmp_path, env=_env(env), start_new_session=True)


def _run(tmp_path, *args, timeout=600, env: dict | None = None):
    proc = subprocess.run(vqct_cmd() + list(args), capture_output=True, text=True, cwd=tmp_path,
                          env=_env(env), timeout=timeout)
    (tmp_path / "run.log").write_text(proc.stderr)  # for a look after a failure
    return proc


def _intact_steps(run_dir: Path) -> dict[int, Path]:
    steps = {}
    for directory in run_dir.glob("checkpoint_*"):
        try:
            steps[verify_checkpoint(directory)["step"]] = directory
        except (DamagedCheckpoint, OSError):
            pass  # still being written
    return steps


def _wait_for_checkpoint(run_dir: Path, step: int, proc: subprocess.Popen) -> None:
    """Waits for a state, not for a time: a busy machine only makes it slower. A run that
    hangs meets pytest-timeout's limit, which dumps every thread."""
    while not any(s >= step for s in _intact_steps(run_dir)):
        assert proc.poll() is None, "training ended before the fault could be injected"
        time.sleep(0.2)


def _history_steps(uri: str, run_id: str, key: str) -> list[int]:
    from mlflow.tracking import MlflowClient

    return sorted(m.step for m in MlflowClient(uri).get_metric_history(run_id, key))


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_a_killed_worker_restarts_from_the_last_checkpoint_in_the_same_run(tmp_path, shapes_dir):
    args = _args(tmp_path, f"{shapes_dir}/train", f"{shapes_dir}/val", "trainer.max_steps=60",
                 "trainer.checkpoint_every=5", "trainer.run_name=killed", "trainer.max_failures=2")
    proc = _start(tmp_path, *args)
    try:
        _wait_for_checkpoint(tmp_path / "runs" / "killed", 5, proc)
        workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
                   if p.name().startswith("ray::RayTrainWorker")]  # not their DataLoader processes
        assert len(workers) == 2, [p.name() for p in workers]
        workers[-1].kill()  # SIGKILL: no cleanup, like a lost node
        out, _ = proc.communicate(timeout=600)
    finally:
        _kill_group(proc)
    log = (tmp_path / "train.log").read_text()
    assert proc.returncode == 0, log[-3000:]
    result = last_json(out)
    assert result["steps"] == 60
    assert "resumed from step" in log  # the new worker group restored a checkpoint
    logged = _history_steps(result["tracking_uri"], result["run_id"], "perf/step_time_s")
    assert logged == [1] + list(range(5, 61, 5))  # every step once: none repeated, none lost


def _interrupt(tmp_path, args, run_dir: Path, signum: int) -> str:
    """Start a run, send SIGNUM after its second checkpoint, check it stopped cleanly;
    returns the MLflow run id."""
    from mlflow.tracking import MlflowClient

    proc = _start(tmp_path, *args)
    try:
        _wait_for_checkpoint(run_dir, 10, proc)
        family = psutil.Process(proc.pid).children(recursive=True)
        assert family  # Ray's processes, started by this driver
        proc.send_signal(signum)
        proc.communicate(timeout=600)
        gone, alive = psutil.wait_procs(family, timeout=300)  # a loaded machine reaps slowly
    finally:
        _kill_group(proc)
    log = (tmp_path / "train.log").read_text()
    assert proc.returncode == 130, log[-3000:]
    assert not alive, [p.cmdline() for p in alive]  # no orphan Ray process
    assert "stopped: last intact checkpoint" in log and f"trainer.run_name={run_dir.name}" in log
    run_id = json.loads((run_dir / "vqct_run.json").read_text())["mlflow_run_id"]
    assert MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(run_id).info.status == "KILLED"
    return run_id


def test_ctrl_c_stops_cleanly(tmp_path, shapes_dir):
    args = _args(tmp_path, f"{shapes_dir}/train", f"{shapes_dir}/val", "trainer.max_steps=500",
                 "trainer.checkpoint_every=5", "trainer.run_name=ctrlc")
    _interrupt(tmp_path, args, tmp_path / "runs" / "ctrlc", signal.SIGINT)


@pytest.mark.timeout(1800)  # two trainings and a Ray start each: generous for a loaded machine
def test_sigterm_stops_cleanly_and_resume_passes_over_a_damaged_checkpoint(tmp_path, shapes_dir):
    from mlflow.tracking import MlflowClient

    args = _args(tmp_path, f"{shapes_dir}/train", f"{shapes_dir}/val", "trainer.max_steps=500",
                 "trainer.checkpoint_every=5", "trainer.keep_checkpoints=3", "trainer.run_name=stopped")
    run_dir = tmp_path / "runs" / "stopped"
    run_id = _interrupt(tmp_path, args, run_dir, signal.SIGTERM)
    uri = f"sqlite:///{tmp_path}/mlflow.db"

    # Damage the newest checkpoint: the resume must name it and take the one before.
    steps = sorted(_intact_steps(run_dir))
    assert len(steps) >= 2, steps
    newest, previous = _intact_steps(run_dir)[steps[-1]], steps[-2]
    shard = next(newest.rglob("*optim_states.pt"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    target = previous + 10
    resumed = _run(tmp_path, *args[:-4], f"trainer.max_steps={target}", "trainer.checkpoint_every=5",
                   "trainer.run_name=stopped", "trainer.resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"checkpoint {newest.name} is damaged" in resumed.stderr
    assert f"resumed from step {previous}" in resumed.stderr
    result = last_json(resumed.stdout)
    assert result["run_id"] == run_id and result["steps"] == target
    assert MlflowClient(uri).get_run(run_id).info.status == "FINISHED"
    logged = _history_steps(uri, run_id, "perf/step_time_s")
    assert logged == sorted(set(logged)) and logged[-1] == target  # no step twice


def test_training_on_a_fault_corpus_completes_and_counts_every_skip(tmp_path, shapes_dir):
    from mlflow.tracking import MlflowClient

    corpus = write_fault_corpus(tmp_path / "corpus")
    good = sorted(str(p) for p in (shapes_dir / "train").glob("*.tar"))[:4]
    shards = good + [str(p) for p in corpus] + [str(tmp_path / "corpus" / "gone-404.tar")]
    # 30 steps x 8 samples per rank: every reader passes over its shards at least twice.
    proc = _run(tmp_path, *_args(tmp_path, f"[{','.join(shards)}]", f"{shapes_dir}/val", "trainer.max_steps=30",
                                 "trainer.checkpoint_every=30", "trainer.log_every=10"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 of 7 shards are missing" in proc.stderr
    result = last_json(proc.stdout)
    assert result["steps"] == 30
    metrics = MlflowClient(result["tracking_uri"]).get_run(result["run_id"]).data.metrics
    assert metrics["data/missing_shards"] == 1 and metrics["data/train_shards"] == 6
    for kind, count in EXPECTED_SKIPS.items():  # exact counts for one pass: test_data.py
        assert metrics[f"data/skipped_{kind}"] >= count, kind
    assert metrics["data/skipped_total"] == sum(metrics[f"data/skipped_{k}"] for k in EXPECTED_SKIPS)


def test_a_shard_list_with_nothing_usable_stops_with_a_clear_message(tmp_path, shapes_dir):
    corpus = write_fault_corpus(tmp_path / "corpus", usable=False)
    proc = _run(tmp_path, *_args(tmp_path, f"[{','.join(str(p) for p in corpus)}]", f"{shapes_dir}/val",
                                 "trainer.max_steps=5"))  # _run's timeout only catches a spinning run
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "no usable sample" in last and "resume with trainer.resume=true" in last, last
    assert proc.stderr.count("resumed from step") == 0  # stopped once, not retried
    # Each reader tried its own shards, then every shard, and only then stopped: the stop names the
    # whole set. (No assertion on time, which depends on load; nor on how often Ray repeats a line.)
    assert "no usable sample in any of the" in last, last


def test_diverging_numerics_stop_the_run_once_with_the_term_and_step(tmp_path, shapes_dir):
    """lr=1e30: the first update blows the weights up, every later loss is NaN/Inf, each
    batch is skipped, and the third in a row stops the run — without a retry."""
    from mlflow.tracking import MlflowClient

    proc = _run(tmp_path, *_args(tmp_path, f"{shapes_dir}/train", f"{shapes_dir}/val", "optim.lr=1e30",
                                 "trainer.max_steps=20", "trainer.checkpoint_every=1", "trainer.max_bad_steps=3",
                                 "trainer.run_name=diverged"))
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "3 non-finite steps in a row" in last and "was not finite at step 2" in last, last
    assert "last good checkpoint: step 1" in last and "trainer.run_name=diverged" in last, last
    assert "loss/" in last and proc.stderr.count("resumed from step") == 0
    run_id = json.loads((tmp_path / "runs" / "diverged" / "vqct_run.json").read_text())["mlflow_run_id"]
    run = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(run_id)
    assert run.info.status == "FAILED" and run.data.metrics["numerics/skipped_batches"] == 3


@pytest.mark.timeout(1800)  # a training and a Ray head: generous for a loaded machine
def test_a_lost_ray_head_fails_the_run_clearly(tmp_path, shapes_dir):
    from mlflow.tracking import MlflowClient

    temp_dir = tempfile.mkdtemp(prefix="vqray-", dir="/tmp")  # short: Ray's unix sockets live there
    head, address = start_ray_head(temp_dir)
    args = _args(tmp_path, f"{shapes_dir}/train", f"{shapes_dir}/val", "trainer.max_steps=500",
                 "trainer.checkpoint_every=5", "trainer.run_name=headless")
    run_dir = tmp_path / "runs" / "headless"
    proc = _start(tmp_path, *args, env={"RAY_ADDRESS": address})
    try:
        _wait_for_checkpoint(run_dir, 5, proc)
        os.killpg(head.pid, signal.SIGKILL)  # the head node is gone: GCS, raylet and workers at once
        proc.communicate(timeout=300)
    finally:
        _kill_group(proc)
        stop(head, timeout=5)
        shutil.rmtree(temp_dir, ignore_errors=True)
    log = (tmp_path / "train.log").read_text()
    last = log.strip().splitlines()[-1]
    assert proc.returncode == 1, log[-3000:]
    assert "lost contact with the Ray cluster" in last, last
    assert "last intact checkpoint" in last and "trainer.run_name=headless" in last, last
    run_id = json.loads((run_dir / "vqct_run.json").read_text())["mlflow_run_id"]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert MlflowClient(uri).get_run(run_id).info.status == "FAILED"
    # resuming on a new cluster: test_a_lost_node_that_never_returns_…


def _stored_steps(store: str, run: str) -> list[int]:
    """Steps of the run's intact checkpoints in the object store (each pulled and verified)."""
    from vqct.records.checkpoint_integrity import DamagedCheckpoint, verify_checkpoint
    from vqct.records.storage import Storage

    storage, steps = Storage(store), []
    for name in storage.list_dirs(run):
        if name.startswith("checkpoint_"):
            try:
                steps.append(verify_checkpoint(storage.pull(f"{run}/{name}"))["step"])
            except (DamagedCheckpoint, OSError):
                pass  # still being written
    return steps


@pytest.mark.timeout(1800)  # two trainings, a two-node cluster and a new head
def test_a_lost_node_that_never_returns_stops_the_run_after_node_wait_and_it_resumes(tmp_path, shapes_dir,
                                                                                      monkeypatch):
    """Two Ray nodes of one CPU each, one worker on each, no disk in common: each node its own
    scratch, the run's storage an S3 API server. The second node's raylet is killed by PID
    after a checkpoint. Ray Train alone would retry starting the group forever: the run stops
    after trainer.node_wait_s, and resumes in the same MLflow run on a new cluster."""
    s3, endpoint = start_s3_server(tmp_path)
    try:
        _lose_a_node_then_resume(tmp_path, shapes_dir, monkeypatch, endpoint)
    finally:
        stop(s3, timeout=10)


def _lose_a_node_then_resume(tmp_path, shapes_dir, monkeypatch, endpoint):
    import boto3
    from mlflow.tracking import MlflowClient

    store_env = s3_env(endpoint)
    for key, value in {**store_env, "VQCT_SCRATCH": str(tmp_path / "driver")}.items():
        monkeypatch.setenv(key, value)
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="vqct-runs")
    store = "s3://vqct-runs/team"
    temp_dir = tempfile.mkdtemp(prefix="vqray-", dir="/tmp")  # short: Ray's unix sockets live there
    node_dir = tempfile.mkdtemp(prefix="vqnode-", dir="/tmp")
    head, address = start_ray_head(temp_dir, cpus=1, env={"VQCT_SCRATCH": str(tmp_path / "head-scratch")})
    node = None
    args = _args(tmp_path, f"{shapes_dir}/train", f"{shapes_dir}/val", "trainer.max_steps=500",
                 "trainer.checkpoint_every=5", "trainer.node_wait_s=15", "trainer.run_name=nodeless",
                 f"trainer.storage_path={store}")
    try:
        node, node_port = start_ray_node(node_dir, address, env={"VQCT_SCRATCH": str(tmp_path / "node-scratch")})
        proc = _start(tmp_path, *args, env={"RAY_ADDRESS": address})
        try:
            while not any(s >= 5 for s in _stored_steps(store, "nodeless")):  # a state, not a time
                assert proc.poll() is None, "training ended before the fault could be injected"
                time.sleep(1)
            os.kill(raylet_pid(node_port), signal.SIGKILL)  # the node is gone, and stays gone
            proc.communicate(timeout=600)
        finally:
            _kill_group(proc)
    finally:
        if node:
            stop(node, timeout=10)
        stop(head, timeout=60)
        shutil.rmtree(node_dir, ignore_errors=True)
    log = (tmp_path / "train.log").read_text()
    last = log.strip().splitlines()[-1]
    assert proc.returncode == 1, log[-3000:]
    assert "waiting up to 15 s for it to come back" in log, log[-3000:]
    assert "a node was lost and did not come back" in last and "1 of the 2 CPUs" in last, last
    assert f"last intact checkpoint {store}/nodeless/checkpoint_" in last and "trainer.run_name=nodeless" in last, last
    assert not (tmp_path / "runs").exists()
    run_id = json.loads((tmp_path / "driver" / "vqct-runs" / "team" / "nodeless" / "vqct_run.json").read_text())[
        "mlflow_run_id"]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert MlflowClient(uri).get_run(run_id).info.status == "FAILED"

    step = max(_stored_steps(store, "nodeless"))
    head, address = start_ray_head(temp_dir, env={"VQCT_SCRATCH": str(tmp_path / "new-cluster")})
    try:  # a new cluster and a new driver scratch: everything comes from the store
        resumed = _run(tmp_path, *args[:-5], f"trainer.max_steps={step + 5}", "trainer.checkpoint_every=5",
                       "trainer.run_name=nodeless", "trainer.resume=true", f"trainer.storage_path={store}",
                       env={"RAY_ADDRESS": address, "VQCT_SCRATCH": str(tmp_path / "driver2")})
    finally:
        stop(head, timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from step {step}" in resumed.stderr
    result = last_json(resumed.stdout)
    assert result["run_id"] == run_id and result["steps"] == step + 5
    assert result["checkpoint"].startswith(f"{store}/nodeless/checkpoint_")
    # the workers restored from their node's own scratch (its VQCT_SCRATCH), each rank its own copy
    restored = tmp_path / "new-cluster"
    assert sorted(p.name for p in restored.iterdir()) == ["rank0", "rank1"]
    assert all(list((restored / r / "vqct-runs" / "team" / "nodeless").glob("checkpoint_*")) for r in ("rank0", "rank1"))
    # nothing counted twice: each logged step once in the one MLflow run
    steps = _history_steps(uri, run_id, "loss/rec_l1")
    assert steps == sorted(set(steps)) and steps[-1] == step + 5
