"""A team's tracking server: `mlflow server` on a PostgreSQL database (Debian's server, started
here as its own user on 127.0.0.1) with its artifacts in an S3 API server (moto's). 16 runs
log at once through it with vqct's MetricLogger, as 16 training jobs would, and lose no metric;
a tokenizer registered through it loads in a fresh process that knows only the server's URL."""

import json
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from servers import free_port, s3_env, start_mlflow_server, start_postgres, start_s3_server, stop, stop_postgres
from vqct.config import load_recipe
from vqct.tokenizer import build_tokenizer
from vqct.tokenizer.pretrained import save_pretrained

pytestmark = pytest.mark.e2e

RUNS, STEPS, KEYS = 16, 30, ("loss/total", "loss/rec_l1", "perf/step_time_s", "lr")
BUCKET = "team-artifacts"

_LOAD = """
import json, sys
import numpy as np
import mlflow.pyfunc
model = mlflow.pyfunc.load_model("models:/vqgan_shapes/1")
print(json.dumps(model.predict(np.load(sys.argv[1])).tolist()))
"""


@pytest.fixture
def team_server(tmp_path, monkeypatch):
    import boto3

    if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        pytest.skip("PostgreSQL is not installed (make test installs it where apt-get can)")

    s3, endpoint = start_s3_server(tmp_path)
    pg, backend, pg_data = start_postgres()
    env = s3_env(endpoint)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    mlflow_proc = None
    try:
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
        mlflow_proc, url = start_mlflow_server(tmp_path, free_port(), backend=backend,
                                               artifacts=f"s3://{BUCKET}/mlartifacts", workers=2)
        yield url, boto3.client("s3", endpoint_url=endpoint)
    finally:
        if mlflow_proc:
            stop(mlflow_proc, timeout=10)
        stop_postgres(pg, pg_data)
        stop(s3, timeout=10)


def _one_run(url: str, index: int, start: threading.Barrier) -> str:
    from mlflow.tracking import MlflowClient

    from vqct.tracking.metric_logger import MetricLogger

    client = MlflowClient(url)
    experiment = client.get_experiment_by_name("team")
    run_id = client.create_run(experiment.experiment_id, run_name=f"job-{index}").info.run_id
    logger = MetricLogger(url, run_id)
    start.wait()  # every run logs at the same time
    for step in range(1, STEPS + 1):
        logger.log({k: index + step / 1000 for k in KEYS}, step)
    client.log_text(run_id, f"run {index}", "notes/run.txt")  # through the server's proxy, to S3
    client.set_terminated(run_id)
    assert not logger.buffer and not logger.failing
    return run_id


def test_sixteen_runs_at_once_lose_no_metric_and_a_registered_model_loads_elsewhere(team_server, tmp_path):
    from mlflow.tracking import MlflowClient

    from vqct.tracking.mlflow_run import experiment_id
    from vqct.tracking.registry import register_tokenizer

    url, s3 = team_server
    client = MlflowClient(url)
    experiment_id(client, "team", url)
    start = threading.Barrier(RUNS)
    with ThreadPoolExecutor(RUNS) as pool:
        run_ids = list(pool.map(lambda i: _one_run(url, i, start), range(RUNS)))

    for index, run_id in enumerate(run_ids):
        for key in KEYS:
            history = client.get_metric_history(run_id, key)
            assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(1, STEPS + 1)), (index, key)
            assert {round(m.value - index, 6) for m in history} == {round(s / 1000, 6) for s in range(1, STEPS + 1)}
        assert client.get_run(run_id).info.status == "FINISHED"
    stored = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="mlartifacts/")["Contents"]]
    assert sum(k.endswith("notes/run.txt") for k in stored) == RUNS

    cfg = load_recipe("vqgan_shapes")
    torch.manual_seed(0)
    model = build_tokenizer(cfg).eval()
    save_pretrained(model, cfg, tmp_path / "tok")
    run_id = client.create_run(experiment_id(client, "team", url)).info.run_id
    assert register_tokenizer(url, run_id, cfg, tmp_path / "tok", {"checkpoint": "/nowhere"}) == "1"
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    np.save(tmp_path / "images.npy", images.numpy())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # no AWS variables: a client reaches the artifacts through the server alone
    proc = subprocess.run([sys.executable, "-c", _LOAD, str(tmp_path / "images.npy")], capture_output=True,
                          text=True, timeout=300, cwd=elsewhere,
                          env={"MLFLOW_TRACKING_URI": url, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert torch.equal(torch.tensor(json.loads(proc.stdout.strip().splitlines()[-1])), model.tokenize(images))
