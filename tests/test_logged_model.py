"""A registered version is a real MLflow model: `mlflow.pyfunc.load_model` of it, in a fresh
process in another directory, encodes as the tokenizer it came from, decodes, and imports
neither DeepSpeed, Ray nor the text model (real MLflow, sqlite store)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from vqct.config import load_recipe
from vqct.tokenizer import build_tokenizer
from vqct.tokenizer.pretrained import save_pretrained
from vqct.records.command_output import last_json

_PROBE = """
import json, sys
import numpy as np
import mlflow.pyfunc
loaded = mlflow.pyfunc.load_model("models:/vqgan_shapes/1")
images = np.load(sys.argv[1])
indices = loaded.predict(images)
python_model = loaded.unwrap_python_model()
pixels = np.round((images.transpose(0, 2, 3, 1) + 1) * 127.5).astype(np.uint8)
import vqct
print(json.dumps({
    "indices": indices.tolist(), "dtype": str(indices.dtype),
    "decoded": python_model.decode(indices).tolist(),
    "uint8_indices": python_model.predict(None, pixels).tolist(),
    "vqct_from": vqct.__path__[0],
    "imported": sorted(n for n in ("deepspeed", "ray", "transformers", "spacy") if n in sys.modules),
}))
"""


@pytest.fixture
def registered(tmp_path):
    from mlflow.tracking import MlflowClient

    from vqct.tracking.mlflow_run import experiment_id
    from vqct.tracking.registry import register_tokenizer

    cfg = load_recipe("vqgan_shapes")
    torch.manual_seed(0)
    model = build_tokenizer(cfg).eval()
    save_pretrained(model, cfg, tmp_path / "tok")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri, registry_uri=uri)
    run_id = client.create_run(experiment_id(client, "toy", uri)).info.run_id
    version = register_tokenizer(uri, run_id, cfg, tmp_path / "tok", {"checkpoint": "/nowhere"})
    return uri, client, run_id, version, model


def test_a_registered_version_loads_as_a_pyfunc_elsewhere_and_encodes_like_the_tokenizer(registered, tmp_path):
    uri, client, run_id, version, model = registered
    assert version == "1"
    held = client.get_model_version("vqgan_shapes", "1")
    assert held.source.startswith("models:/m-") and held.run_id == run_id
    assert held.tags["codes"] == "256" and held.tags["checkpoint"] == "/nowhere"
    images = (torch.rand(3, 3, 32, 32) * 2 - 1).numpy()
    np.save(tmp_path / "images.npy", images)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(tmp_path / "images.npy")], capture_output=True,
                          text=True, cwd=elsewhere, timeout=300,
                          env={"MLFLOW_TRACKING_URI": uri, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = last_json(proc.stdout)
    expected = model.tokenize(torch.from_numpy(images))
    assert got["dtype"] == "int64" and torch.equal(torch.tensor(got["indices"]), expected)
    torch.testing.assert_close(torch.tensor(got["decoded"]), model.detokenize(expected), rtol=1e-5, atol=1e-5)
    # uint8 pixels are the same images up to rounding: nearly every code agrees
    assert (torch.tensor(got["uint8_indices"]) == expected).float().mean() > 0.9
    assert got["imported"] == []
    assert "/code/vqct" in got["vqct_from"] or got["vqct_from"].endswith("code/vqct")  # the model's own code


def test_the_logged_model_has_a_signature_an_example_and_minimal_requirements(registered, tmp_path):
    import mlflow
    from mlflow.entities import LoggedModelStatus
    from mlflow.models import Model

    from vqct.tracking.logged_model import tracking_store

    uri, client, run_id, _, _ = registered
    with tracking_store(uri):
        local = mlflow.artifacts.download_artifacts("models:/vqgan_shapes/1", dst_path=str(tmp_path / "dl"))
    meta = Model.load(local)
    inputs = meta.signature.inputs.to_dict()[0]
    assert inputs["tensor-spec"] == {"dtype": "float32", "shape": (-1, 3, 32, 32)}
    assert meta.signature.outputs.to_dict()[0]["tensor-spec"] == {"dtype": "int64", "shape": (-1, 8, 8)}
    assert meta.saved_input_example_info is not None
    requirements = (tmp_path / "dl" / "requirements.txt").read_text().split()
    assert sorted(r.split("==")[0] for r in requirements) == ["mlflow", "numpy", "omegaconf", "safetensors", "torch"]
    assert all("==" in r and "+" not in r for r in requirements)
    # the run's own logged model (the runs table's Model column) is the version's source
    assert [f"models:/{m.model_id}" for m in client.search_logged_models(
        experiment_ids=[client.get_run(run_id).info.experiment_id])
            if m.source_run_id == run_id and m.status == LoggedModelStatus.READY] == [
                client.get_model_version("vqgan_shapes", "1").source]


def test_bad_images_are_one_clear_error(registered):
    from vqct.errors import UserError
    from vqct.tokenizer.pretrained import images_from_array

    with pytest.raises(UserError, match=r"give float \(B, 3, 32, 32\) in \[-1, 1\] or uint8 \(B, 32, 32, 3\)"):
        images_from_array(np.zeros((2, 32, 32), dtype=np.float32), 32)
    with pytest.raises(UserError, match="this tokenizer encodes 32x32; resize them first"):
        images_from_array(np.zeros((2, 3, 64, 64), dtype=np.float32), 32)


def test_registering_leaves_the_processs_mlflow_uris_and_environment_as_they_were(tmp_path, monkeypatch):
    """MLflow's setters write MLFLOW_*_URI into the environment, which every subprocess then
    inherits: after vqct's own use of another store, neither the URIs nor the variables moved."""
    import os

    import mlflow

    from vqct.tracking.logged_model import tracking_store

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    with tracking_store(f"sqlite:///{tmp_path}/other.db"):
        assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path}/other.db"
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ
    assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == before
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    mlflow.set_tracking_uri("http://127.0.0.1:1")
    with tracking_store(f"sqlite:///{tmp_path}/other.db"):
        pass
    assert os.environ["MLFLOW_TRACKING_URI"] == mlflow.get_tracking_uri() == "http://127.0.0.1:1"
    assert "MLFLOW_REGISTRY_URI" not in os.environ
    mlflow.set_tracking_uri(None)
