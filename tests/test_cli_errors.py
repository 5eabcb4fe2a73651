"""Bad input: one line on stderr naming the problem, exit code 2, no traceback, no worker."""

import os
import socket
import subprocess
import sys

import pytest

from conftest import REPO, vqct_cmd


def _run(args, env_extra=None, cwd=REPO):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run(vqct_cmd() + args, capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_user_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert proc.stdout == ""


def test_nonexistent_recipe():
    _assert_user_error(_run(["train", "no_such_recipe"]), "recipe 'no_such_recipe' not found", "vqgan_shapes")


def test_unknown_config_key():
    _assert_user_error(_run(["train", "vqgan_shapes", "data.bogus=1"]), "data.bogus is not a config key", "image_size")


def test_a_key_the_chosen_quantizer_does_not_read():
    _assert_user_error(_run(["train", "vqct_shapes", "quantizer.codebook_size=1024"]),
                       "quantizer.codebook_size is not read by the vqct quantizer",
                       "code_dim, gcn_hidden, gcn_dropout, adj_topk")


def test_a_renamed_key_names_its_new_name():
    _assert_user_error(_run(["train", "lgvq_shapes", "align.lgvq.alpha=0.1"]),
                       "align.lgvq.alpha was renamed align.lgvq.gsa_weight")


def test_wrong_type():
    _assert_user_error(_run(["train", "vqgan_shapes", "trainer.max_steps=many"]), "trainer.max_steps")


@pytest.mark.parametrize("override,needle", [
    ("data.image_size=30", "not divisible by the downsampling factor"),
    ("trainer.num_workers=0", "trainer.num_workers=0 must be a positive number"),
    ("trainer.zero_stage=5", "trainer.zero_stage=5"),
    ("trainer.precision=fp8", "trainer.precision"),
    ("optim.adam=turbo", "optim.adam='turbo' must be one of: auto, single, foreach, fused"),
    ("model.attention=flash", "model.attention='flash' must be one of: sdpa, math"),
])
def test_invalid_values(override, needle):
    _assert_user_error(_run(["train", "vqgan_shapes", override]), needle)


def test_shard_path_with_no_shards(tmp_path):
    _assert_user_error(_run(["train", "vqgan_shapes", f"data.train_shards={tmp_path}/empty"]),
                       "data.train_shards", "no shards found")


def test_caption_line_without_conditions(tmp_path):
    _assert_user_error(_run(["generate", str(tmp_path), "--caption-line", "2", "--out", "x.png"]),
                       "--caption-line 2", "--conditions CODES --out-shards DIR")


def test_code_set_into_a_bare_bucket(tmp_path):
    _assert_user_error(_run(["data", "tokenize", str(tmp_path), str(tmp_path), "--out", "s3://bucket"]),
                       "--out s3://bucket: give s3://BUCKET/PREFIX")


def test_code_set_that_is_not_one(tmp_path):
    _assert_user_error(_run(["train", "generator_shapes", f"data.train_codes={tmp_path}"]),
                       f"data.train_codes: {tmp_path} is not a code-shard directory", "vqct data tokenize")


def test_unreachable_ray_address(shapes_dir, tmp_path):
    port = _free_port()  # nothing listens there
    proc = _run(["train", "vqgan_shapes", f"data.train_shards={shapes_dir}/train",
                 f"data.val_shards={shapes_dir}/val", f"trainer.storage_path={tmp_path}/runs",
                 f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"],
                env_extra={"RAY_ADDRESS": f"127.0.0.1:{port}"})
    _assert_user_error(proc, f"RAY_ADDRESS=127.0.0.1:{port}", "no Ray cluster answers")
    assert not (tmp_path / "runs").exists()  # nothing started, nothing written


def test_resume_without_a_run(shapes_dir, tmp_path):
    proc = _run(["train", "vqgan_shapes", f"data.train_shards={shapes_dir}/train",
                 f"data.val_shards={shapes_dir}/val", f"trainer.storage_path={tmp_path}/runs",
                 "trainer.resume=true"])
    _assert_user_error(proc, "trainer.resume=true", "was not found")


def test_bad_shapes_arguments(tmp_path):
    _assert_user_error(_run(["data", "shapes", "--out", str(tmp_path), "--num-samples", "0"]), "--num-samples")


def test_paper_recipe_without_shards_names_the_missing_keys():
    _assert_user_error(_run(["train", "vqct_coco"]), "data.train_shards", "data.val_shards")


def test_vqct_width_mismatch():
    _assert_user_error(_run(["train", "vqct_shapes", "quantizer.code_dim=8"]), "2 x quantizer.code_dim=8")


def test_eval_of_something_that_is_not_a_checkpoint(tmp_path):
    _assert_user_error(_run(["eval", "not-a-run", "--data", str(tmp_path)]),
                       "not-a-run: not a trained tokenizer here; give a checkpoint directory")
    _assert_user_error(_run(["eval", str(tmp_path), "--data", str(tmp_path)]), "a directory, but not a trained tokenizer")


def test_eval_of_an_unknown_run_id(tmp_path):
    proc = _run(["eval", "0" * 32, "--data", str(tmp_path), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    _assert_user_error(proc, f"MLflow run {'0' * 32}: no tracking store at")
    assert not (tmp_path / "m.db").exists()  # looking never creates a store


def test_eval_checks_its_arguments_before_loading_anything_heavy(tmp_path):
    """A wrong --data fails before torchmetrics, transformers or the model load: seconds, not
    the minute a loaded 2-core machine took when they came first."""
    import json

    from vqct.config import load_recipe
    from vqct.config.typed import config_to_dict

    checkpoint = tmp_path / "checkpoint_2026-01-01_00-00-00.000000"
    checkpoint.mkdir()
    state = {"step": 1, "config": config_to_dict(load_recipe("vqgan_shapes", []))}
    (checkpoint / "vqct_state.json").write_text(json.dumps(state))
    probe = ("import sys\nfrom vqct.errors import UserError\nfrom vqct.eval.evaluate import evaluate\n"
             f"try:\n    evaluate({str(checkpoint)!r}, {str(tmp_path / 'none')!r})\n"
             "except UserError as exc:\n    print(exc)\n"
             "heavy = ('torchmetrics', 'transformers', 'deepspeed', 'webdataset')\n"
             "print(sorted(m for m in heavy if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert lines[0].startswith("--data: no shards found"), proc.stdout
    assert lines[-1] == "[]"
