"""Stage 2 end to end on the real stack: a tokenizer's code shards (`vqct data tokenize`), a
caption-conditioned generator trained on 2 Ray workers with DeepSpeed ZeRO-2, its loss and
sample grids in MLflow, a resume in the same MLflow run, its registered model loaded in a fresh
process, `vqct generate`, and codes of two tokenizers refused."""

import io
import json
import shutil
import subprocess

import pytest
import torch
from PIL import Image

from conftest import fresh_python_last_line, vqct_cmd
from vqct.config import load_recipe
from vqct.tokenizer import build_tokenizer
from vqct.tokenizer.pretrained import save_pretrained

pytestmark = pytest.mark.e2e

SMALL = ["data.batch_size=8", "data.val_batches=2", "condition.tokens=8", "generator.n_layer=2",
         "generator.n_embd=64", "trainer.checkpoint_every=4", "trainer.image_every=4", "sampling.samples=4",
         "trainer.storage_path=runs"]


def _vqct(args, cwd):
    proc = subprocess.run(vqct_cmd() + args, capture_output=True, text=True, cwd=cwd, timeout=600)
    return proc, (json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else None)


def test_generator_trains_on_code_shards_logs_samples_and_resumes(tmp_path, shapes_dir):
    cfg = load_recipe("vqgan_shapes")
    torch.manual_seed(0)
    save_pretrained(build_tokenizer(cfg), cfg, tmp_path / "tok")
    proc, codes = _vqct(["data", "tokenize", "tok", str(shapes_dir / "train"), "--out", "codes"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert codes["samples"] == 240 and codes["layout"]["groups"] == [["codes", 256, 1]]

    data = ["data.train_codes=codes", "data.val_codes=codes", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"]
    proc, first = _vqct(["train", "generator_shapes", *data, *SMALL, "trainer.max_steps=8"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert first["steps"] == 8 and first["family"] == "generator" and codes["tokenizer"] in first["tokenizer"]
    assert 0 < first["val_loss"] < 7 and first["tokens_per_s"] > 0

    proc, resumed = _vqct(["train", "generator_shapes", *data, *SMALL, "trainer.max_steps=12",
                           "trainer.resume=true"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from step 8" in proc.stderr
    assert resumed["steps"] == 12 and resumed["run_id"] == first["run_id"]

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    history = client.get_metric_history(first["run_id"], "val/loss")
    assert [m.step for m in history] == [4, 8, 12]
    # the caption's gain at each validation: 8 steps from init, it barely shows
    gains = client.get_metric_history(first["run_id"], "val/condition_gain")
    assert [m.step for m in gains] == [4, 8, 12] and abs(resumed["condition_gain"]) < 0.5
    assert gains[-1].value == pytest.approx(resumed["condition_gain"])
    grids = [a.path for a in client.list_artifacts(first["run_id"], "samples")]
    assert grids == [f"samples/samples_step{s:07d}.png" for s in (4, 8, 12)]
    assert client.get_run(first["run_id"]).data.tags["condition"] == "caption"

    # the registered model: captions in, images out, in a fresh process without the training stack
    assert first["model_version"] == "1" and resumed["model_version"] == "2"
    load = ("import sys, mlflow, pandas as pd\n"
            f"mlflow.set_tracking_uri('sqlite:///{tmp_path}/mlflow.db')\n"
            "m = mlflow.pyfunc.load_model('models:/generator_shapes/2')\n"
            "out = m.predict(pd.DataFrame({'caption': ['a red circle', 'a blue square']}), "
            "params={'top_k': 16, 'cfg_scale': 2.0})\n"
            "print(out.shape, 'deepspeed' in sys.modules, 'ray' in sys.modules)\n")
    assert fresh_python_last_line(load, tmp_path) == "(2, 3, 32, 32) False False"

    # a grid from the registered version: caption and guidance; then from the run directory,
    # completion of a held-out image
    run_dir = f"runs/{first['run_name']}"
    proc, grid = _vqct(["generate", "models:/generator_shapes/2", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
                        "--caption", "a red circle", "-n", "4", "--out", "grid.png", "--top-k", "32",
                        "--cfg-scale", "2"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert grid["samples"] == 4 and Image.open(tmp_path / "grid.png").size == (268, 268)  # 2 x 2 tiles of 128 px, 4 px apart
    image = tmp_path / "held_out.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(image)
    proc, done = _vqct(["generate", run_dir, "--caption", "x", "-n", "2", "--prefix-image", str(image),
                        "--out", "completed.png"], tmp_path)
    assert proc.returncode == 0 and done["prefix_rows"] == 4, proc.stderr[-3000:]
    proc, _ = _vqct(["generate", run_dir, "-n", "2", "--out", "x.png"], tmp_path)
    assert proc.returncode == 2 and "give --caption" in proc.stderr
    proc, uncond = _vqct(["generate", run_dir, "--null-condition", "-n", "2", "--out", "uncond.png"], tmp_path)
    assert proc.returncode == 0 and uncond["samples"] == 2, proc.stderr[-3000:]
    proc, _ = _vqct(["generate", run_dir, "--null-condition", "--cfg-scale", "2", "-n", "2", "--out", "x.png"], tmp_path)
    assert proc.returncode == 2 and "guidance" in proc.stderr

    # one completion per held-out condition, spread over Ray tasks, as image shards; then a resume
    proc, sampled = _vqct(["generate", run_dir, "--conditions", "codes", "--out-shards", "samples", "--complete",
                           "--top-k", "16"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (sampled["shards"], sampled["sampled"], sampled["samples"]) == (6, 6, 240)
    import webdataset as wds

    shards = sorted(str(p) for p in (tmp_path / "samples").glob("samples-*.tar"))
    out = list(wds.DataPipeline(wds.SimpleShardList(shards), wds.tarfile_to_samples()))
    conditions = {s["__key__"]: s for s in wds.DataPipeline(wds.SimpleShardList(
        sorted(str(p) for p in (tmp_path / "codes").glob("codes-*.tar"))), wds.tarfile_to_samples())}
    assert len(out) == 240 and {s["__key__"] for s in out} == set(conditions)
    for sample in out[:5]:
        assert Image.open(io.BytesIO(sample["jpg"])).size == (32, 32)
        assert sample["real.codes.npy"] == conditions[sample["__key__"]]["codes.npy"]
        assert sample["txt"].decode() == conditions[sample["__key__"]]["txt"].decode().splitlines()[0].strip()
    proc, again = _vqct(["generate", run_dir, "--conditions", "codes", "--out-shards", "samples", "--complete",
                         "--top-k", "16"], tmp_path)
    assert proc.returncode == 0 and again["sampled"] == 0, proc.stderr[-3000:]

    # val codes of another tokenizer: refused before any worker starts
    shutil.copytree(tmp_path / "codes", tmp_path / "other")
    manifest = json.loads((tmp_path / "other" / "manifest.json").read_text())
    manifest["tokenizer"]["digest"] = "0" * 64
    (tmp_path / "other" / "manifest.json").write_text(json.dumps(manifest))
    proc, _ = _vqct(["train", "generator_shapes", "data.train_codes=codes", "data.val_codes=other", *SMALL], tmp_path)
    assert proc.returncode == 2 and "codes of two tokenizers" in proc.stderr
