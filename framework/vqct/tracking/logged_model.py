"""A tokenizer directory as an MLflow model (pyfunc flavor): what a registry version holds.

`mlflow.pyfunc.load_model("models:/<recipe>@best")` gives a model whose `predict` maps
images to code indices:
- input: float32 (B, 3, S, S) in [-1, 1], the model's signature (MLflow checks it). The
  Python model itself (`loaded.unwrap_python_model().predict(None, images)`) also takes
  uint8 (B, S, S, 3), as image libraries hold pictures; MLflow's check would refuse those.
- output: int64 indices, (B, h, w) for vq, (B, h, w, topk + 1) for vqct.
`loaded.unwrap_python_model().decode(indices)` maps indices back to float32 (B, 3, S, S)
images in [-1, 1].

The model carries the vqct code it needs (`code/vqct`, `code/vqct_kernels`) and pins only torch,
safetensors, numpy, omegaconf and mlflow: loading it needs neither DeepSpeed, Ray nor the text
model, nor the run's checkpoint directory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import torch

TOKENIZER_ARTIFACT = "tokenizer"  # the tokenizer directory's key among the model's artifacts
MODEL_NAME = "tokenizer"  # the logged model's name in its run
TOKENIZER_REQUIREMENTS = ("torch", "safetensors", "numpy", "omegaconf", "mlflow")
_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


class TokenizerModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from vqct.tokenizer.pretrained import from_pretrained

        self.tokenizer, self.config = from_pretrained(context.artifacts[TOKENIZER_ARTIFACT])

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        from vqct.tokenizer.pretrained import images_from_array

        images = images_from_array(model_input, self.config.data.image_size)
        return self.tokenizer.tokenize(images).numpy()

    @torch.no_grad()
    def decode(self, indices) -> np.ndarray:
        return self.tokenizer.detokenize(torch.as_tensor(indices).long()).numpy()


def pinned_requirements(names: tuple[str, ...] = TOKENIZER_REQUIREMENTS) -> list[str]:
    from importlib.metadata import version

    # The local part (+cu128) names a wheel index, not a version pip can resolve elsewhere.
    return [f"{name}=={version(name).split('+')[0]}" for name in names]


def package_code(into: Path) -> list[str]:
    """vqct's own packages (vqct and vqct_kernels) copied into INTO, one directory each."""
    import vqct_kernels

    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    sources = (Path(__file__).resolve().parents[1], Path(vqct_kernels.__file__).resolve().parent)  # vqct/, vqct_kernels/
    return [str(shutil.copytree(source, into / source.name, ignore=ignore)) for source in sources]


# MLflow's "models from code": the model is this file's object, not a pickle, so loading runs
# no unpickling and does not depend on the Python version that logged it.
_MODEL_FILE = """from mlflow.models import set_model
from vqct.tracking.logged_model import TokenizerModel
set_model(TokenizerModel())
"""


@contextmanager
def tracking_store(uri: str):
    """MLflow's fluent API (log_model, download_artifacts, the registry's models:/ lookups) on
    URI for a while. MLflow's setters also write MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI into
    the environment (for subprocesses), so both the process's URIs and those variables are put
    back exactly as they were: a process that had set neither has neither set afterwards."""
    before = {name: os.environ.get(name) for name in _URI_VARIABLES}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before["MLFLOW_TRACKING_URI"])  # None: back to MLflow's default
        mlflow.set_registry_uri(before["MLFLOW_REGISTRY_URI"])
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def log_tokenizer_model(uri: str, run_id: str, tokenizer_dir: Path, image_size: int) -> str:
    """Log TOKENIZER_DIR as RUN_ID's pyfunc model in the store at URI; returns its model id
    (`models:/<id>`)."""
    from mlflow.models import infer_signature

    example = np.zeros((2, 3, image_size, image_size), dtype=np.float32)
    model = TokenizerModel()
    model.load_context(type("Context", (), {"artifacts": {TOKENIZER_ARTIFACT: str(tokenizer_dir)}}))
    signature = infer_signature(example, model.predict(None, example))
    return log_code_model(uri, run_id, MODEL_NAME, "vqct-tokenizer", _MODEL_FILE,
                          {TOKENIZER_ARTIFACT: str(tokenizer_dir)}, signature, pinned_requirements(), example)


def log_code_model(uri: str, run_id: str, name: str, model_type: str, model_source: str, artifacts: dict,
                   signature, requirements: list[str], input_example=None) -> str:
    """Log a "models from code" pyfunc (MODEL_SOURCE: the file that calls set_model) with vqct's
    own packages as its code, as RUN_ID's logged model NAME; returns its model id."""
    client = mlflow.MlflowClient(uri)
    logged = client.create_logged_model(client.get_run(run_id).info.experiment_id, name=name,
                                        source_run_id=run_id, model_type=model_type)
    with tempfile.TemporaryDirectory() as code_root:
        model_file = Path(code_root) / f"{name}_model.py"
        model_file.write_text(model_source)
        with tracking_store(uri), mlflow.start_run(run_id=run_id, log_system_metrics=False):
            mlflow.pyfunc.log_model(name=name, python_model=str(model_file), model_id=logged.model_id,
                                    artifacts=artifacts, code_paths=package_code(Path(code_root)),
                                    signature=signature, input_example=input_example,
                                    pip_requirements=requirements)
    return logged.model_id
