"""MLflow tracking: run creation on a real sqlite store, and a logger that never raises."""

import socket

from conftest import REPO
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
    recipe = client.download_artifacts(run_id, "config/recipe/vqgan_shapes.yaml", str(tmp_path))
    assert open(recipe).read() == (REPO / "recipes" / "vqgan_shapes.yaml").read_text()  # as written
    assert open_run(cfg, "unit-run", resume_run_id=run_id) == run_id
    assert client.get_run(run_id).data.tags["vqct.resumed"] == "true"


def test_mark_killed_closes_a_run_left_running_and_nothing_else(tmp_path, capsys):
    import json

    from mlflow.tracking import MlflowClient

    from vqct.cli.main import main
    from vqct.records.run_record import write_run

    uri = absolute_uri(f"sqlite:///{tmp_path}/mlflow.db")
    client = MlflowClient(uri)
    experiment = client.create_experiment("e")
    left, closed = client.create_run(experiment).info.run_id, client.create_run(experiment).info.run_id
    client.set_terminated(closed, status="FINISHED")
    for run_id in (left, closed):
        write_run(tmp_path / run_id, {"mlflow_run_id": run_id, "tracking_uri": uri})
        assert main(["mark-killed", str(tmp_path / run_id)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["status_before"], r["status"]) for r in lines] == [("RUNNING", "KILLED"), ("FINISHED", "FINISHED")]
    assert [client.get_run(r).info.status for r in (left, closed)] == ["KILLED", "FINISHED"]
    assert main(["mark-killed", str(tmp_path / "nowhere")]) == 2
    assert "not a vqct run directory" in capsys.readouterr().err


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


def test_shard_sets_are_the_runs_datasets_with_counts_and_a_digest_of_the_list(tmp_path):
    import json

    from mlflow.tracking import MlflowClient

    from vqct.tracking.datasets import log_shard_sets

    shards = tmp_path / "train"
    shards.mkdir()
    names = [f"part-{i:03d}.tar" for i in range(3)]
    (shards / "manifest.json").write_text(json.dumps({"shards": [{"name": n, "samples": 10 + i}
                                                                 for i, n in enumerate(names)]}))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("d")).info.run_id
    train = [str(shards / n) for n in names]
    log_shard_sets(uri, run_id, "toy", train, ["https://example.org/val/{000..001}.tar"])
    inputs = {d.tags[0].value: d.dataset for d in client.get_run(run_id).inputs.dataset_inputs}
    assert set(inputs) == {"train", "validation"}
    assert inputs["train"].name == "toy-train" and json.loads(inputs["train"].source) == {"uri": str(shards)}
    assert json.loads(inputs["train"].profile) == {"shards": 3, "samples": 33, "shards_with_known_count": 3}
    assert inputs["validation"].source_type == "http"
    assert json.loads(inputs["validation"].profile)["samples"] is None  # no manifest says
    digest = inputs["train"].digest
    other = client.create_run(client.get_run(run_id).info.experiment_id).info.run_id
    log_shard_sets(uri, other, "toy", train[:2], ["https://example.org/val/{000..001}.tar"])
    assert {d.dataset.digest for d in client.get_run(other).inputs.dataset_inputs if d.tags[0].value == "train"} \
        != {digest}  # another shard list, another digest


def test_system_metrics_log_at_least_one_sample_however_short_the_run(tmp_path):
    from mlflow.tracking import MlflowClient

    from vqct.tracking.system_metrics import start_system_metrics

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("s")).info.run_id
    start_system_metrics(uri, run_id, interval_s=3600, resumed=False).stop()  # stopped long before an interval
    metrics = client.get_run(run_id).data.metrics
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(metrics)
    assert 0 <= metrics["system/cpu_utilization_percentage"] <= 100
