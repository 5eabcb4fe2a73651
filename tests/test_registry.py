"""The registry's `best` alias moves only to a better-scoring version (real MLflow, sqlite)."""

import pytest


@pytest.fixture
def store(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri, registry_uri=uri)
    client.create_registered_model("toy")
    experiment = client.create_experiment("toy")
    return uri, client, experiment


def _version(client, experiment, tmp_path, **metrics):
    run = client.create_run(experiment)
    for key, value in metrics.items():
        client.log_metric(run.info.run_id, f"eval/{key}", value)
    checkpoint = tmp_path / run.info.run_id
    checkpoint.mkdir()
    client.create_model_version("toy", source=str(checkpoint), run_id=run.info.run_id,
                                tags={"checkpoint": str(checkpoint)})
    return run.info.run_id


def test_best_alias_follows_the_metric_in_its_direction(store, tmp_path):
    from vqct.tracking.registry import describe_promotion, promote_if_best
    from vqct.tracking.targets import resolve_tokenizer

    uri, client, experiment = store
    first = _version(client, experiment, tmp_path, psnr=20.0, l1=0.10)
    second = _version(client, experiment, tmp_path, psnr=19.0, l1=0.05)
    moved = promote_if_best(uri, first, "toy", "psnr")
    assert moved == {"registered": True, "version": "1", "metric": "psnr", "best": True, "moved": True,
                     "best_version": "1", "moved_from": None}
    assert describe_promotion("toy", moved) == "registry: best moved to toy version 1 from no version (by psnr)"
    kept = promote_if_best(uri, second, "toy", "psnr")
    assert kept == {"registered": True, "version": "2", "metric": "psnr", "best": False, "moved": False,
                    "best_version": "1"}
    assert describe_promotion("toy", kept) == ("registry: best stays on toy version 1 (version 2 is not better "
                                               "on psnr)")
    assert str(client.get_model_version_by_alias("toy", "best").version) == "1"
    off = promote_if_best(uri, second, "toy", "l1", promote=False)  # lower L1 is better, but promotion is off
    assert off["would_move"] is True and off["best"] is False and off["promotion"] == "off"
    assert describe_promotion("toy", off) == "registry: promotion off; best stays on version 1 (l1 would move it " \
                                             "to version 2)"
    assert str(client.get_model_version_by_alias("toy", "best").version) == "1"
    moved = promote_if_best(uri, second, "toy", "l1")
    assert moved["moved"] is True and moved["moved_from"] == "1"
    assert describe_promotion("toy", moved) == "registry: best moved to toy version 2 from version 1 (by l1)"
    assert str(client.get_model_version_by_alias("toy", "best").version) == "2"
    again = promote_if_best(uri, second, "toy", "l1")
    assert again["best"] is True and again["moved"] is False
    assert describe_promotion("toy", again) == "registry: best stays on toy version 2 (already this run's version)"
    assert resolve_tokenizer("models:/toy@best", uri).checkpoint == tmp_path / second
    assert resolve_tokenizer("models:/toy/1", uri).checkpoint == tmp_path / first
    assert resolve_tokenizer("models:/toy@latest", uri).checkpoint == tmp_path / second  # the newest version


def test_unknown_models_are_user_errors(store):
    from vqct.errors import UserError
    from vqct.tracking.targets import resolve_tokenizer

    uri, _, _ = store
    with pytest.raises(UserError, match="not in the model registry"):
        resolve_tokenizer("models:/toy@nope", uri)
    with pytest.raises(UserError, match="give models:/"):
        resolve_tokenizer("models:/toy", uri)


def test_a_registry_failure_is_one_warning_and_the_run_stays_finished(store, tmp_path, capsys):
    from vqct.config import load_recipe
    from vqct.tracking.registry import register_run

    uri, client, experiment = store
    run_id = client.create_run(experiment).info.run_id
    client.set_terminated(run_id, "FINISHED")
    damaged = tmp_path / "checkpoint_gone"  # e.g. storage the driver cannot read
    assert register_run(uri, run_id, load_recipe("vqgan_shapes"), str(damaged)) is None
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"warning: could not register run {run_id} in the model registry")
    assert f"the run stays FINISHED and its checkpoint is {damaged}" in lines[0]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert client.search_model_versions("name='vqgan_shapes'") == []
