"""Ray Jobs on a real head on loopback: `vqct submit --wait`, the plain `ray job submit` CLI,
and a failing job's exit code and log. Auth mode is explicit (conftest: disabled)."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import REPO, vqct_cmd
from servers import free_port, start_mlflow_server, stop
from vqct.records.command_output import last_json

pytestmark = pytest.mark.e2e


def _env() -> dict:
    # The job runs `vqct` from the PATH of the head's processes: this interpreter's.
    bin_dir = str(Path(sys.executable).parent)
    return dict(os.environ, PATH=f"{bin_dir}:{os.environ.get('PATH', '')}", PYTHONPATH=str(REPO))


@pytest.fixture(scope="module")
def job_server():
    """A Ray head with its dashboard (the job server) on 127.0.0.1, stopped by PID."""
    temp_dir = tempfile.mkdtemp(prefix="vqjob-", dir="/tmp")
    port, dashboard = free_port(), free_port()
    ray = Path(sys.executable).with_name("ray")
    proc = subprocess.Popen(
        [str(ray), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", f"--port={port}",
         "--num-cpus=2", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dashboard}", "--object-store-memory=268435456", "--disable-usage-stats",
         # Free ports for the agents: the defaults clash with any other Ray instance on the machine.
         f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
         f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
         f"--temp-dir={temp_dir}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=_env())
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + 600  # a safety net: a loaded machine starts it slowly
    from ray.job_submission import JobSubmissionClient

    while True:
        try:
            JobSubmissionClient(address).list_jobs()
            break
        except Exception:
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError("the Ray head's job server did not come up")
            time.sleep(1)
    yield address
    stop(proc, timeout=60)
    shutil.rmtree(temp_dir, ignore_errors=True)


def _overrides(tmp_path, shapes_dir):
    return [f"data.train_shards={shapes_dir}/train", f"data.val_shards={shapes_dir}/val", "data.batch_size=8",
            "data.val_batches=1", "trainer.max_steps=3", "trainer.checkpoint_every=3", "trainer.log_every=1",
            "trainer.image_every=3", "optim.warmup_steps=0", f"trainer.storage_path={tmp_path}/runs",
            f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", "tracking.experiment=jobs"]


def test_vqct_submit_wait_runs_the_recipe_and_the_run_lands_in_mlflow(job_server, tmp_path, shapes_dir):
    proc = subprocess.run(vqct_cmd() + ["submit", "vqgan_shapes", *_overrides(tmp_path, shapes_dir),
                                        "--address", job_server, "--wait", "--timeout", "600"],
                          capture_output=True, text=True, cwd=REPO, env=_env(), timeout=700)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = last_json(proc.stdout)
    assert result["status"] == "SUCCEEDED" and result["job_id"]
    training = result["training"]
    assert training["steps"] == 3 and training["recipe"] == "vqgan_shapes"
    from mlflow.tracking import MlflowClient

    run = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(training["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["recipe"] == "vqgan_shapes"
    assert "starting a local Ray instance" not in proc.stderr  # it trained on the job's cluster


def test_plain_ray_job_submit_cli_works_too(job_server, tmp_path, shapes_dir):
    ray = Path(sys.executable).with_name("ray")
    proc = subprocess.run([str(ray), "job", "submit", "--address", job_server, "--working-dir", ".", "--",
                           "vqct", "train", "recipes/vqgan_shapes.yaml", *_overrides(tmp_path, shapes_dir)],
                          capture_output=True, text=True, cwd=REPO, env=_env(), timeout=700)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "succeeded" in (proc.stdout + proc.stderr).lower()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("jobs").experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert max(m.step for m in client.get_metric_history(runs[0].info.run_id, "loss/rec_l1")) == 3


def test_a_failing_job_exits_non_zero_with_its_log(job_server, tmp_path, shapes_dir):
    overrides = _overrides(tmp_path, shapes_dir)
    overrides[0] = f"data.train_shards={tmp_path}/no-shards-here"
    proc = subprocess.run(vqct_cmd() + ["submit", "vqgan_shapes", *overrides, "--address", job_server,
                                        "--wait", "--timeout", "300"],
                          capture_output=True, text=True, cwd=REPO, env=_env(), timeout=400)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "no shards found" in proc.stderr  # the job's own error, from its log
    assert "ended FAILED" in proc.stderr.strip().splitlines()[-1]


def test_submit_to_nowhere_is_a_clear_user_error(tmp_path, shapes_dir):
    proc = subprocess.run(vqct_cmd() + ["submit", "vqgan_shapes", *_overrides(tmp_path, shapes_dir),
                                        "--address", f"http://127.0.0.1:{free_port()}"],
                          capture_output=True, text=True, cwd=REPO, env=_env(), timeout=120)
    assert proc.returncode == 2 and "no Ray job server answers there" in proc.stderr
    assert "Traceback" not in proc.stderr


_ROUND_TRIP = """
import json, sys
import mlflow.pyfunc
import numpy as np
import torch
import vqct
from vqct.data.loader import ImageCaptionStream, Loader
from vqct.data.shards import resolve_shards
from vqct.eval.reconstruction import ReconstructionMetrics

loaded = mlflow.pyfunc.load_model("models:/vqgan_shapes@best")
tokenizer = loaded.unwrap_python_model()
direct, _ = vqct.load_tokenizer("models:/vqgan_shapes@best")
metrics = ReconstructionMetrics("cpu")
agree = True
stream = ImageCaptionStream(resolve_shards(sys.argv[1]), image_size=32, shuffle_buffer=0, epochs=1)
for batch in Loader(stream, batch_size=64, num_workers=0):
    indices = loaded.predict(batch.images.numpy())
    agree = agree and torch.equal(direct.tokenize(batch.images), torch.from_numpy(indices))
    metrics.update(batch.images, torch.from_numpy(tokenizer.decode(indices)))
print(json.dumps({**metrics.compute(), "agree": agree,
                  "imported": sorted(n for n in ("deepspeed", "ray") if n in sys.modules)}))
"""


def _round_trip_from_the_registry_alone(tmp_path, shapes_dir, mlflow_server, evaluated):
    """A fresh process in another directory, with the run's storage gone, loads the `best`
    version through the server and reconstructs the held-out set as `vqct eval` measured."""
    (tmp_path / "runs").rename(tmp_path / "runs-elsewhere")
    elsewhere = tmp_path / "another-machine"
    elsewhere.mkdir()
    env = dict(_env(), MLFLOW_TRACKING_URI=mlflow_server)
    proc = subprocess.run([sys.executable, "-c", _ROUND_TRIP, f"{shapes_dir}/val"], capture_output=True, text=True,
                          cwd=elsewhere, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = last_json(proc.stdout)
    assert got["agree"] and got["imported"] == []
    assert got["psnr"] == pytest.approx(evaluated["psnr"], abs=1e-3)
    assert got["l1"] == pytest.approx(evaluated["l1"], abs=1e-5)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on 127.0.0.1 with its own sqlite store and artifact folder, stopped by PID."""
    proc, url = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"), free_port(), _env())
    yield url
    stop(proc, timeout=30)


def test_a_job_tracked_by_an_mlflow_server_registers_its_tokenizer(job_server, mlflow_server, tmp_path,
                                                                  shapes_dir, monkeypatch):
    overrides = [o for o in _overrides(tmp_path, shapes_dir) if not o.startswith("tracking.uri=")]
    proc = subprocess.run(vqct_cmd() + ["submit", "vqgan_shapes", *overrides, f"tracking.uri={mlflow_server}",
                                        "--address", job_server, "--wait", "--timeout", "600"],
                          capture_output=True, text=True, cwd=REPO, env=_env(), timeout=700)
    assert proc.returncode == 0, proc.stderr[-4000:]
    training = last_json(proc.stdout)["training"]
    assert training["tracking_uri"] == mlflow_server and training["model_version"] == "1"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server, registry_uri=mlflow_server)
    latest = client.get_model_version("vqgan_shapes", "1")
    assert latest.run_id == training["run_id"] and latest.tags["checkpoint"] == training["checkpoint"]
    from vqct.tracking.targets import resolve_tokenizer

    resolved = resolve_tokenizer("models:/vqgan_shapes@latest", mlflow_server)
    assert str(resolved.checkpoint) == training["checkpoint"] and resolved.run_id == training["run_id"]
    assert latest.tags["family"] == "vqgan" and len(latest.tags["config_hash"]) >= 8 and latest.tags["git_commit"]

    def run(*args):
        done = subprocess.run(vqct_cmd() + list(args), capture_output=True, text=True, cwd=tmp_path,
                              env=_env(), timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return last_json(done.stdout)

    evaluated = run("eval", training["run_id"], "--data", f"{shapes_dir}/val", "--tracking-uri", mlflow_server)
    assert evaluated["registry"] == {"registered": True, "version": "1", "metric": "psnr", "best": True,
                                     "moved": True, "best_version": "1", "moved_from": None}
    assert str(client.get_model_version_by_alias("vqgan_shapes", "best").version) == "1"

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    import torch

    import vqct

    model, cfg = vqct.load_tokenizer("models:/vqgan_shapes@best")
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    indices = model.tokenize(images)
    direct, _ = vqct.load_tokenizer(training["checkpoint"])  # the version is that run's checkpoint
    assert indices.shape == (2, 8, 8) and torch.equal(indices, direct.tokenize(images))
    assert model.detokenize(indices).shape == (2, 3, 32, 32)

    _round_trip_from_the_registry_alone(tmp_path, shapes_dir, mlflow_server, evaluated)

    listed = {r["recipe"]: r for r in run("recipes", "--tracking-uri", mlflow_server)["recipes"]}
    assert listed["vqgan_shapes"]["runs"] == 1 and listed["vqgan_shapes"]["best_run"] == training["run_id"]
    assert listed["vqct_shapes"]["runs"] == 0 and listed["vqct_shapes"]["quantizer"] == "vqct"

    compared = run("compare", "vqgan_shapes", training["run_id"], "--tracking-uri", mlflow_server,
                   "--out", str(tmp_path / "compare.png"))
    assert (tmp_path / "compare.png").stat().st_size > 10_000
    assert [r["run_id"] for r in compared["runs"]] == [training["run_id"]] * 2
    artifacts = [a.path for a in client.list_artifacts(compared["comparison_run_id"], "compare")]
    assert "compare/compare.png" in artifacts and "compare/table.md" in artifacts
    shown = [a.path for a in client.list_artifacts(training["run_id"], f"compare/{compared['comparison_run_id']}")]
    assert shown == [f"compare/{compared['comparison_run_id']}/compare.png"]
