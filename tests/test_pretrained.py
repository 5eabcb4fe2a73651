"""The tokenizer directory (config.json + model.safetensors): what it saves encodes and decodes
exactly as the model it came from, and loading it needs no DeepSpeed, Ray or text model."""

import json
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from vqct.config import load_recipe
from vqct.quantize import FixedAdjNounQuantizer, TransferQuantizer
from vqct.tokenizer import build_tokenizer
from vqct.tokenizer.pretrained import from_pretrained, read_config, save_pretrained


def _vqct_tokenizer():
    cfg = load_recipe("vqct_shapes")
    torch.manual_seed(0)
    words = torch.randn(10, 6)
    priors = {"adjective_embeddings": words[:4], "noun_embeddings": words[4:],
              "edge_index": torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]]), "edge_weight": torch.ones(4)}
    return build_tokenizer(cfg, priors), cfg


@pytest.mark.parametrize("recipe", ["vqgan_shapes", "vqct_shapes"])
def test_a_saved_tokenizer_encodes_and_decodes_as_the_original(recipe, tmp_path):
    model, cfg = _vqct_tokenizer() if recipe == "vqct_shapes" else (build_tokenizer(load_recipe(recipe)),
                                                                    load_recipe(recipe))
    model.eval()
    save_pretrained(model, cfg, tmp_path / "tok")
    loaded, loaded_cfg = from_pretrained(tmp_path / "tok")
    assert loaded_cfg == cfg and loaded.align is None
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    indices = model.tokenize(images)
    assert torch.equal(loaded.tokenize(images), indices)
    torch.testing.assert_close(loaded.detokenize(indices), model.detokenize(indices))
    meta = json.loads((tmp_path / "tok" / "config.json").read_text())
    assert meta["format"] == "vqct-tokenizer" and meta["token_grid"] == 8
    if recipe == "vqct_shapes":
        assert isinstance(model.quantizer, TransferQuantizer) and isinstance(loaded.quantizer, FixedAdjNounQuantizer)
        assert meta["codes"] == 10 and meta["groups"] == {"adj": 4, "noun": 6} and meta["indices"] == ["B", 8, 8, 3]
        # The GCN is gone: its output, computed once without dropout, is the codebook.
        torch.testing.assert_close(loaded.quantizer.codes, model.quantizer.eval().codebook().detach())
    else:
        assert meta["codes"] == 256 and meta["indices"] == ["B", 8, 8]


def test_loading_imports_no_deepspeed_ray_mlflow_or_text_model(tmp_path):
    model, cfg = _vqct_tokenizer()
    save_pretrained(model, cfg, tmp_path / "tok")
    code = ("import sys; from vqct.tokenizer.pretrained import from_pretrained; import torch; "
            f"m, _ = from_pretrained({str(tmp_path / 'tok')!r}); m.tokenize(torch.zeros(1, 3, 32, 32)); "
            "print(sorted(n for n in ('deepspeed', 'ray', 'mlflow', 'transformers', 'spacy') if n in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_a_directory_that_is_not_a_tokenizer_is_a_clear_error(tmp_path):
    from vqct.errors import UserError

    with pytest.raises(UserError, match="not a vqct tokenizer directory"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format": "vqct-tokenizer", "version": 99, "config": {}}))
    with pytest.raises(UserError, match="version 99 is not one this vqct reads"):
        read_config(tmp_path)
