"""An MLflow server that goes away mid-run: the logger keeps every value and sends it
when the server is back, and nothing raises into the training loop."""

import pytest

from servers import free_port, start_mlflow_server, stop
from vqct.tracking.metric_logger import MetricLogger
from vqct.records.command_output import last_json

pytestmark = pytest.mark.e2e


def test_metrics_logged_during_an_outage_arrive_once_the_server_returns(tmp_path, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    port = free_port()
    server, url = start_mlflow_server(tmp_path, port)
    try:
        client = MlflowClient(url)
        run_id = client.create_run(client.create_experiment("outage")).info.run_id
        logger = MetricLogger(url, run_id)
        for step in (1, 2, 3):
            logger.log({"loss": 1.0 / step, "usage": 0.5}, step)
        stop(server, timeout=30)  # the tracking server dies mid-run

        for step in (4, 5, 6):
            logger.log({"loss": 1.0 / step, "usage": 0.5}, step)  # must not raise
        assert logger.failing and len(logger.buffer) == 6
        assert capsys.readouterr().err.count("MLflow logging failed") == 1

        server, _ = start_mlflow_server(tmp_path, port)  # back, on the same store
        logger.log({"loss": 1.0 / 7, "usage": 0.5}, 7)
        assert not logger.failing and not logger.buffer
        assert "reachable again" in capsys.readouterr().err
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "loss"))
        assert history == [(s, 1.0 / s) for s in range(1, 8)]  # all, once each, in order
        assert len(client.get_metric_history(run_id, "usage")) == 7
    finally:
        stop(server, timeout=30)


def test_a_training_run_outlives_an_mlflow_outage_and_loses_no_metric(tmp_path, shapes_dir):
    """The tracking server is killed after the first checkpoint and restarted once the run
    has gone 20 steps further: the run finishes, and MLflow has every logged step once."""
    import json
    import os
    import subprocess
    import time

    from mlflow.tracking import MlflowClient

    from conftest import REPO, vqct_cmd
    from vqct.records.checkpoint_integrity import DamagedCheckpoint, verify_checkpoint

    port = free_port()
    server, url = start_mlflow_server(tmp_path, port)
    run_dir = tmp_path / "runs" / "outage"

    def reached(step: int) -> bool:
        for directory in run_dir.glob("checkpoint_*"):
            try:
                if verify_checkpoint(directory)["step"] >= step:
                    return True
            except (DamagedCheckpoint, OSError):
                pass
        return False

    def wait_for(step: int) -> None:  # a state, not a time: pytest-timeout catches a hang
        while not reached(step):
            assert proc.poll() is None, f"training ended before a checkpoint at step {step}"
            time.sleep(0.2)

    args = ["train", "vqgan_shapes", f"data.train_shards={shapes_dir}/train", f"data.val_shards={shapes_dir}/val",
            "data.batch_size=8", "data.val_batches=1", "loss.disc_start=1000", "trainer.image_every=1000",
            "trainer.max_steps=200", "trainer.checkpoint_every=10", "trainer.log_every=5", "optim.warmup_steps=0",
            f"trainer.storage_path={tmp_path}/runs", f"tracking.uri={url}", "trainer.run_name=outage"]
    env = dict(os.environ, PYTHONPATH=str(REPO), MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
               MLFLOW_HTTP_REQUEST_TIMEOUT="3")
    proc = subprocess.Popen(vqct_cmd() + args, stdout=subprocess.PIPE, stderr=open(tmp_path / "train.log", "w"),
                            text=True, cwd=tmp_path, env=env, start_new_session=True)
    try:
        wait_for(10)
        stop(server, timeout=30)  # down mid-run
        wait_for(30)  # training went on without it
        server, _ = start_mlflow_server(tmp_path, port)
        out, _ = proc.communicate(timeout=600)
        log = (tmp_path / "train.log").read_text()
        assert proc.returncode == 0, log[-3000:]
        assert "MLflow logging failed" in log and "reachable again" in log
        result = last_json(out)
        history = MlflowClient(url).get_metric_history(result["run_id"], "perf/step_time_s")
        assert sorted(m.step for m in history) == [1] + list(range(5, 201, 5))
        assert MlflowClient(url).get_run(result["run_id"]).info.status == "FINISHED"
    finally:
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
        stop(server, timeout=30)
