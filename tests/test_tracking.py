"""MLflow tracking: run creation on a real sqlite store, and a logger that never raises."""

import socket

from vqct.config import load_recipe
from vqct.tracking.metric_logger import MetricLogger
from vqct.tracking.mlflow_run import absolute_uri, open_run, sqlite_artifact_root


def test_open_run_logs_params_tags_and_config(tmp_path):
    from mlflow.tracking import MlflowClient

    cfg = load_recipe("vqgan_shapes", ["trainer.max_steps=7"])
    cfg.tracking.uri = uri = absolute_uri(f"sqlite:///{tmp_path}/mlflow.db")
    run_id = open_run(cfg, "unit-run")
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.data.params["trainer.max_steps"] == "7"
    assert run.data.params["model.ch_mult"] == "[1, 2, 2]"
    assert run.data.tags["recipe"] == "vqgan_shapes" and run.data.tags["vqct.run_name"] == "unit-run"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.artifact_location == sqlite_artifact_root(uri) == (tmp_path / "mlartifacts").as_uri()
    local = client.download_artifacts(run_id, "config/resolved.yaml", str(tmp_path))
    text = open(local).read()
    assert "max_steps: 7" in text
    assert open_run(cfg, "unit-run", resume_run_id=run_id) == run_id
    assert client.get_run(run_id).data.tags["vqct.resumed"] == "true"


def test_metric_logger_survives_a_dead_server(monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    logger = MetricLogger(f"http://127.0.0.1:{port}", "0" * 32)
    logger.log({"loss": 1.0, "usage": 0.5}, step=1)
    logger.log({"loss": 0.9}, step=2)
    assert logger.failing and len(logger.buffer) == 3  # kept for the next successful write
    assert capsys.readouterr().err.count("MLflow logging failed") == 1  # warned once per outage
