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
    from vqct.tracking.registry import promote_if_best, resolve_model_uri

    uri, client, experiment = store
    first = _version(client, experiment, tmp_path, psnr=20.0, l1=0.10)
    second = _version(client, experiment, tmp_path, psnr=19.0, l1=0.05)
    assert promote_if_best(uri, first, "toy", "psnr")["best"] is True
    assert promote_if_best(uri, second, "toy", "psnr") == {"registered": True, "version": "2", "best": False,
                                                           "metric": "psnr", "best_version": "1"}
    assert str(client.get_model_version_by_alias("toy", "best").version) == "1"
    assert promote_if_best(uri, second, "toy", "l1")["best"] is True  # lower L1 is better
    assert str(client.get_model_version_by_alias("toy", "best").version) == "2"
    assert resolve_model_uri("models:/toy@best", uri) == str(tmp_path / second)
    assert resolve_model_uri("models:/toy/1", uri) == str(tmp_path / first)
    assert resolve_model_uri("models:/toy@latest", uri) == str(tmp_path / second)  # the newest version


def test_unknown_models_are_user_errors(store):
    from vqct.errors import UserError
    from vqct.tracking.registry import resolve_model_uri

    uri, _, _ = store
    with pytest.raises(UserError, match="not in the model registry"):
        resolve_model_uri("models:/toy@nope", uri)
    with pytest.raises(UserError, match="give models:/"):
        resolve_model_uri("models:toy", uri)
