"""A generator directory (stage2/pretrained.py) as an MLflow model: conditions in, images out.

`mlflow.pyfunc.load_model(uri).predict(pandas.DataFrame({"caption": [...]}), params={...})` gives
float32 images (B, 3, S, S) in [0, 1], one per caption (an unconditional generator reads only
how many rows there are). A segmentation generator takes class maps instead: a uint8 array
(B, S, S) at the tokenizer's image size, one map per image (the scenes' seg.png). Params:
temperature, top_k, top_p, cfg_scale (0: off), seed. The model carries the generator, the
tokenizer that decodes its codes and the caption model, plus vqct's own code; loading needs no
DeepSpeed, Ray or checkpoint directory.
"""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import numpy as np

from vqct.tracking.logged_model import TOKENIZER_REQUIREMENTS, log_code_model, pinned_requirements

GENERATOR_ARTIFACT = "generator"
MODEL_NAME = "generator"
PARAMS = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "cfg_scale": 0.0, "seed": 0}


class GeneratorModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from vqct.stage2.pretrained import from_pretrained_generator

        self.generator, self.tokenizer = from_pretrained_generator(context.artifacts[GENERATOR_ARTIFACT])

    def predict(self, context, model_input, params=None) -> np.ndarray:
        from vqct.stage2.generate import sample_images
        from vqct.stage2.sampling import SamplingConfig

        p = {**PARAMS, **(params or {})}
        guided = self.generator.model.guided
        sampling = SamplingConfig(float(p["temperature"]), int(p["top_k"]), float(p["top_p"]),
                                  float(p["cfg_scale"]) if guided and p["cfg_scale"] else None)
        if self.generator.config.condition.name == "segmentation":
            maps = np.asarray(model_input)
            return sample_images(self.generator, self.tokenizer, len(maps), segmentation=maps, sampling=sampling,
                                 seed=int(p["seed"])).numpy()
        captions = [str(c) for c in model_input["caption"]] if hasattr(model_input, "columns") else \
            [str(c) for c in model_input]
        return sample_images(self.generator, self.tokenizer, len(captions), captions if guided else None,
                             sampling=sampling, seed=int(p["seed"])).numpy()


_MODEL_FILE = """from mlflow.models import set_model
from vqct.tracking.generator_model import GeneratorModel
set_model(GeneratorModel())
"""


def log_generator_model(uri: str, run_id: str, generator_dir: Path) -> str:
    """Log GENERATOR_DIR as RUN_ID's pyfunc model; returns its model id (`models:/<id>`)."""
    from mlflow.models import infer_signature

    model = GeneratorModel()
    model.load_context(type("Context", (), {"artifacts": {GENERATOR_ARTIFACT: str(generator_dir)}}))
    example = _example(model, generator_dir)
    signature = infer_signature(example, model.predict(None, example), params=PARAMS)
    requirements = pinned_requirements(TOKENIZER_REQUIREMENTS + ("transformers", "tokenizers", "pandas"))
    return log_code_model(uri, run_id, MODEL_NAME, "vqct-generator", _MODEL_FILE,
                          {GENERATOR_ARTIFACT: str(generator_dir)}, signature, requirements)


def _example(model: GeneratorModel, generator_dir: Path):
    """Two conditions of the kind the generator reads: its signature is inferred from them."""
    import pandas as pd

    if model.generator.config.condition.name != "segmentation":
        return pd.DataFrame({"caption": ["a red circle", "a small blue square"]})
    from vqct.stage2.pretrained import TOKENIZER_DIR
    from vqct.tokenizer.pretrained import read_config

    size = read_config(generator_dir / TOKENIZER_DIR)[0].data.image_size
    maps = np.zeros((2, size, size), np.uint8)  # as seg.png reads; the second with a class on its left half
    maps[1, :, : size // 2] = min(1, model.generator.config.condition.classes - 1)
    return maps
