"""End to end on real components: shapes shards -> Ray Train (2 workers) -> DeepSpeed
ZeRO engines on gloo -> MLflow sqlite store; then resume in the same MLflow run."""

import json
import math
import os
import shutil
import statistics
import subprocess
import tempfile

import pytest
import torch

from conftest import REPO, vqct_cmd
from servers import s3_client, s3_env, start_ray_head, start_s3_server, stop
from vqct.records.command_output import last_json

pytestmark = pytest.mark.e2e


def _train(tmp_path, shapes_dir, *overrides, timeout=600, env=None, recipe="vqgan_shapes", storage=None):
    args = ["train", recipe,
            f"data.train_shards={shapes_dir}/train", f"data.val_shards={shapes_dir}/val",
            "data.batch_size=16", "data.val_batches=2",
            f"trainer.storage_path={storage or tmp_path / 'runs'}", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
            "tracking.experiment=e2e", "trainer.log_every=5", "optim.warmup_steps=2", *overrides]
    proc = subprocess.run(vqct_cmd() + args, capture_output=True, text=True, cwd=tmp_path,
                          env=dict(os.environ, PYTHONPATH=str(REPO), **(env or {})), timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return last_json(proc.stdout), proc.stderr


def _history(uri, run_id, key):
    from mlflow.tracking import MlflowClient

    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key))


@pytest.fixture
def s3_store(tmp_path):
    """An S3 API server (moto's) with an empty bucket; yields the environment that reaches it."""
    proc, endpoint = start_s3_server(tmp_path)
    try:
        s3_client(endpoint).create_bucket(Bucket="vqct-runs")
        yield s3_env(endpoint)
    finally:
        stop(proc, timeout=10)


def _keys(env, prefix):
    listing = s3_client(env["AWS_ENDPOINT_URL"]).get_paginator("list_objects_v2")
    pages = listing.paginate(Bucket="vqct-runs", Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_train_zero2_then_resume_in_the_same_mlflow_run(tmp_path, shapes_dir, s3_store):
    """The run's storage is an object store (an S3 API server): checkpoints, the run record and
    the resume go through it, each process with a node-local mirror of its own; the resume and
    `vqct eval` run from empty mirrors, as on a node that shares no disk with the first; then
    stage 2 from the same store (_stage2_on_the_store)."""
    from mlflow.tracking import MlflowClient

    store = "s3://vqct-runs/team"
    first, _ = _train(tmp_path, shapes_dir, "trainer.max_steps=20", "trainer.checkpoint_every=10",
                      "trainer.zero_stage=2", "loss.disc_start=15", "trainer.image_every=20",
                      "trainer.run_name=e2e", storage=store, env={**s3_store, "VQCT_SCRATCH": f"{tmp_path}/node1"})
    assert first["checkpoint"].startswith(f"{store}/e2e/checkpoint_"), first["checkpoint"]
    stored = _keys(s3_store, "team/e2e/")
    assert "team/e2e/vqct_run.json" in stored
    checkpoint_key = first["checkpoint"][len("s3://vqct-runs/"):]
    assert {f"{checkpoint_key}/vqct_state.json", f"{checkpoint_key}/vqct_manifest_rank0.json",
            f"{checkpoint_key}/vqct_manifest_rank1.json"} <= set(stored)
    assert not (tmp_path / "runs").exists()
    for key in ("run_id", "recipe", "steps", "psnr", "codebook_usage", "images_per_s", "tracking_uri"):
        assert first[key] is not None, key
    assert first["steps"] == 20 and first["recipe"] == "vqgan_shapes"
    assert 0 < first["codebook_usage"] <= 1 and first["psnr"] > 5
    uri, run_id = first["tracking_uri"], first["run_id"]

    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["recipe"] == "vqgan_shapes" and run.data.tags["family"] == "vqgan"
    assert len(run.data.tags["config_hash"]) == 12 and run.data.tags["git_commit"]
    assert run.data.params["trainer.zero_stage"] == "2" and run.data.metrics["perf/zero_stage"] == 2  # 2 workers
    for key in ("loss/codebook", "loss/g_adv", "loss/disc", "codebook/usage", "codebook/perplexity",
                "perf/images_per_s", "perf/step_time_s", "data/skipped_total", "val/psnr"):
        assert key in run.data.metrics, key
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"config", "reconstructions"} <= artifacts
    assert [a.path for a in client.list_artifacts(run_id, "reconstructions")] == \
        ["reconstructions/val_step0000020.png"]
    from PIL import Image

    grid = Image.open(client.download_artifacts(run_id, "reconstructions/val_step0000020.png", str(tmp_path)))
    assert grid.size[0] > 8 * 128 and grid.size[1] == 2 * (128 + 4)  # 8 labelled 32 px pairs, tiles of 128 px
    # What the run read, the machine it ran on, the recipe as written, the model it made
    contexts = {d.tags[0].value: d.dataset.name for d in run.inputs.dataset_inputs}
    assert contexts == {"train": "vqgan_shapes-train", "validation": "vqgan_shapes-validation"}
    assert "system/cpu_utilization_percentage" in run.data.metrics
    assert "config/recipe/vqgan_shapes.yaml" in {a.path for a in client.list_artifacts(run_id, "config/recipe")}
    assert first["model_version"] == "1"
    version = MlflowClient(uri, registry_uri=uri).get_model_version("vqgan_shapes", "1")
    assert [f"models:/{m.model_id}" for m in client.search_logged_models([run.info.experiment_id])
            if m.source_run_id == run_id] == [version.source]

    second, log = _train(tmp_path, shapes_dir, "trainer.max_steps=40", "trainer.checkpoint_every=10",
                         "trainer.zero_stage=2", "loss.disc_start=15", "trainer.image_every=20",
                         "trainer.resume=true", "trainer.run_name=e2e", storage=store,
                         env={**s3_store, "VQCT_SCRATCH": f"{tmp_path}/node2"})
    assert second["run_id"] == run_id and second["run_name"] == "e2e" and second["steps"] == 40
    assert "resumed from step 20" in log
    rec = _history(uri, run_id, "loss/rec_l1")
    assert [step for step, _ in rec] == [1, 5, 10, 15, 20, 25, 30, 35, 40]  # continued, none twice
    # The reconstruction loss fell. One batch's L1 swings by +-0.06 this early (flat images
    # of different colours), so compare means: steps 25-40 (after the resume) against 1-5.
    early = statistics.mean(v for step, v in rec if step <= 5)
    late = statistics.mean(v for step, v in rec if step >= 25)
    assert late < 0.9 * early, rec
    assert client.get_run(run_id).info.status == "FINISHED"

    # vqct eval from the store, on a third empty mirror: the run's newest intact checkpoint
    proc = subprocess.run(vqct_cmd() + ["eval", f"{store}/e2e", "--data", f"{shapes_dir}/val"], capture_output=True,
                          text=True, cwd=tmp_path, timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(REPO), **s3_store, VQCT_SCRATCH=f"{tmp_path}/node3"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluated = last_json(proc.stdout)
    assert evaluated["checkpoint"].endswith(second["checkpoint"].rsplit("/", 1)[1]) and evaluated["psnr"] > 5
    _stage2_on_the_store(tmp_path, shapes_dir, s3_store, store)


def _stage2_on_the_store(tmp_path, shapes_dir, s3_store, store):
    """Code shards of the stored run (`vqct data tokenize s3://... --out s3://...`), written to
    the store by the tasks and resumed there; a generator run reads them from the store and
    keeps its run there too, its workers loading the
    tokenizer from the run's copy (rank 0 decodes sample grids with it), each step on an empty
    mirror of its own."""
    from mlflow.tracking import MlflowClient

    def vqct(args, scratch):
        proc = subprocess.run(vqct_cmd() + args, capture_output=True, text=True, cwd=tmp_path, timeout=600,
                              env=dict(os.environ, PYTHONPATH=str(REPO), **s3_store, VQCT_SCRATCH=f"{tmp_path}/{scratch}"))
        assert proc.returncode == 0, proc.stderr[-3000:]
        return last_json(proc.stdout)

    tokenize = ["data", "tokenize", f"{store}/e2e", f"{shapes_dir}/train", "--out", "s3://vqct-runs/codes"]
    codes = vqct(tokenize, "node4")
    assert (codes["out"], codes["shards"], codes["samples"]) == ("s3://vqct-runs/codes", 6, 240)
    stored = _keys(s3_store, "codes/")
    assert {"codes/manifest.json", "codes/tokenizer/config.json"} <= set(stored)
    assert sorted(k for k in stored if k.endswith(".tar")) == [f"codes/codes-{i:06d}.tar" for i in range(6)]
    # a shard lost from the store: the next run with the same plan writes only that one
    s3_client(s3_store["AWS_ENDPOINT_URL"]).delete_object(Bucket="vqct-runs", Key="codes/codes-000003.tar")
    again = vqct(tokenize, "node6")
    assert (again["tokenized"], again["shards"], again["samples"]) == (1, 6, 240)
    gen = vqct(["train", "generator_shapes", "data.train_codes=s3://vqct-runs/codes/",
                "data.val_codes=s3://vqct-runs/codes", "data.batch_size=8", "data.val_batches=1",
                "condition.tokens=8", "generator.n_layer=1", "generator.n_embd=32", "trainer.max_steps=4",
                "trainer.checkpoint_every=4", "trainer.image_every=4", "sampling.samples=2", "trainer.run_name=gen",
                f"trainer.storage_path={store}", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"], "node5")
    assert gen["steps"] == 4 and gen["checkpoint"].startswith(f"{store}/gen/checkpoint_") and gen["model_version"] == "1"
    assert codes["tokenizer"] in gen["tokenizer"]
    assert "team/gen/tokenizer/config.json" in _keys(s3_store, "team/gen/tokenizer/")
    samples = [a.path for a in MlflowClient(gen["tracking_uri"]).list_artifacts(gen["run_id"], "samples")]
    assert samples == ["samples/samples_step0000004.png"]


@pytest.fixture
def ray_head():
    """A real Ray head on loopback, started by the test and stopped by its PID."""
    temp_dir = tempfile.mkdtemp(prefix="vqray-", dir="/tmp")  # short: Ray's unix sockets live there
    proc, address = start_ray_head(temp_dir)
    yield address
    stop(proc, timeout=60)  # with --block, the head drains and stops its own children on SIGTERM
    shutil.rmtree(temp_dir, ignore_errors=True)


def _real_shard_set(tmp_path, shapes_dir):
    """The layouts users have: a single held-out tar for 2 readers, an img2dataset slice whose
    downloads all failed (an empty tar, its stats say 0), an empty tar nothing describes, and
    img2dataset's parquet files beside the tars."""
    import webdataset as wds

    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    (data / "val").mkdir()
    for shard in sorted((shapes_dir / "train").glob("*.tar")):
        shutil.copy(shard, data / "train" / shard.name)
    for name in ("00098.tar", "00099.tar"):
        with wds.TarWriter(str(data / "train" / name)):
            pass
    (data / "train" / "00099_stats.json").write_text(json.dumps({"successes": 0, "failed_to_download": 50}))
    (data / "train" / "00099.parquet").write_bytes(b"PAR1")
    shutil.copy(sorted((shapes_dir / "val").glob("*.tar"))[0], data / "val" / "val.tar")
    return data


def test_train_zero3_bf16_grad_accum_on_an_existing_cluster(tmp_path, shapes_dir, ray_head):
    """Also: one validation shard and empty shards do not stop a run (_real_shard_set)."""
    result, log = _train(tmp_path, _real_shard_set(tmp_path, shapes_dir), "trainer.max_steps=10",
                         "trainer.checkpoint_every=10",
                         "trainer.zero_stage=3", "trainer.precision=bf16", "loss.disc_start=5",
                         "trainer.grad_accum=2",
                         "trainer.image_every=10", env={"RAY_ADDRESS": ray_head})
    assert "starting a local Ray instance" not in log  # it joined the head in RAY_ADDRESS
    assert result["steps"] == 10 and result["psnr"] > 0
    from mlflow.tracking import MlflowClient

    run = MlflowClient(result["tracking_uri"]).get_run(result["run_id"])
    assert run.data.params["trainer.zero_stage"] == "3" and run.data.params["trainer.precision"] == "bf16"
    assert "loss/disc" in run.data.metrics  # the GAN path ran under ZeRO-3
    assert "1 shards for 2 readers" in log and "1 of 8 shards hold no sample" in log
    assert _history(result["tracking_uri"], result["run_id"], "data/empty_shards") == [(0, 1.0)]
    assert _history(result["tracking_uri"], result["run_id"], "data/train_shards") == [(0, 7.0)]


def test_vqct_shapes_with_real_minilm_and_spacy(tmp_path, shapes_dir, s3_store):
    """Its run lives in an object store: the workers load the run's copy of the priors, and
    `vqct tokenize` and `vqct export` read the s3:// checkpoint from mirrors of their own."""
    result, log = _train(tmp_path, shapes_dir, "trainer.max_steps=12", "trainer.checkpoint_every=12",
                         "loss.disc_start=6", "trainer.image_every=12", f"text.priors_dir={tmp_path}/priors",
                         "text.adjectives=32", "text.nouns=32", recipe="vqct_shapes", storage="s3://vqct-runs/vqct",
                         env={**s3_store, "VQCT_SCRATCH": f"{tmp_path}/node1"})
    assert "priors built" in log
    assert result["checkpoint"].startswith(f"s3://vqct-runs/vqct/{result['run_name']}/checkpoint_")
    assert f"vqct/{result['run_name']}/priors/manifest.json" in _keys(s3_store, "vqct/")
    assert result["family"] == "vqct" and result["steps"] == 12
    for key in ("codebook_usage", "codebook_usage_adj", "codebook_usage_noun", "perplexity_adj", "perplexity_noun"):
        assert result[key] is not None and result[key] > 0, key
    assert result["codebook_usage_adj"] > 0.5 and result["codebook_usage_noun"] > 0.5
    from mlflow.tracking import MlflowClient

    run = MlflowClient(result["tracking_uri"]).get_run(result["run_id"])
    assert run.data.tags["family"] == "vqct" and run.data.tags["quantizer"] == "vqct"
    for key in ("codebook/usage_adj", "codebook/usage_noun", "codebook/pairs_distinct", "loss/codebook"):
        assert key in run.data.metrics, key

    # Token indices per image from the final checkpoint, for later stages.
    proc = subprocess.run(vqct_cmd() + ["tokenize", result["checkpoint"], "--data", f"{shapes_dir}/val",
                                        "--out", str(tmp_path / "tokens"), "--batch-size", "16"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(REPO), **s3_store, VQCT_SCRATCH=f"{tmp_path}/node2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = last_json(proc.stdout)
    assert summary["images"] == 60 and summary["files"] == 1
    from safetensors.torch import load_file

    indices = load_file(str(tmp_path / "tokens" / "tokens-000000.safetensors"))["indices"]
    keys = json.loads((tmp_path / "tokens" / "tokens-000000.json").read_text())
    assert indices.shape == (60, 8, 8, 3) and len(keys) == 60 and keys[0].startswith("val")
    assert 0 <= indices[..., :2].min() and indices[..., :2].max() < 32  # adjective codes
    assert 0 <= indices[..., 2].min() and indices[..., 2].max() < 32  # noun codes

    # The exported tokenizer directory gives the same tokens without DeepSpeed, priors or text model.
    proc = subprocess.run(vqct_cmd() + ["export", result["checkpoint"], "--out", str(tmp_path / "tok")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(REPO), **s3_store, VQCT_SCRATCH=f"{tmp_path}/node3"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    exported = last_json(proc.stdout)
    assert exported["codes"] == 64 and exported["files"] == ["config.json", "model.safetensors"]
    from vqct.data.loader import ImageCaptionStream, Loader
    from vqct.data.shards import resolve_shards
    from vqct.tokenizer.pretrained import from_pretrained

    tokenizer, _ = from_pretrained(tmp_path / "tok")
    stream = ImageCaptionStream(resolve_shards(f"{shapes_dir}/val"), image_size=32, shuffle_buffer=0, epochs=1)
    first = next(iter(Loader(stream, batch_size=16, num_workers=0)))
    assert torch.equal(tokenizer.tokenize(first.images).to(indices.dtype), indices[:16])


def test_lgvq_shapes_on_one_worker_runs_zero_0_logs_each_language_loss_and_resumes(tmp_path, shapes_dir,
                                                                                   monkeypatch):
    """LG-VQ's losses are logged and learn; the recipe asks for ZeRO-2, but one worker has
    nothing to shard, so it runs stage 0, says so, resumes from its stage-0 checkpoint, and the
    tokenizer loads by the run's name."""
    common = ("trainer.num_workers=1", "trainer.checkpoint_every=5", "loss.disc_start=100",
              "trainer.image_every=8", "trainer.run_name=alone")
    first, log = _train(tmp_path, shapes_dir, *common, "trainer.max_steps=5", recipe="lgvq_shapes")
    assert "note: trainer.zero_stage=2: running ZeRO stage 0, as one worker has nothing to shard" in log
    result, log = _train(tmp_path, shapes_dir, *common, "trainer.max_steps=8", "trainer.resume=true",
                         recipe="lgvq_shapes")
    assert "resumed from step 5" in log and result["run_id"] == first["run_id"]
    assert result["family"] == "lgvq" and result["steps"] == 8
    from mlflow.tracking import MlflowClient

    client = MlflowClient(result["tracking_uri"])
    run = client.get_run(result["run_id"])
    assert run.data.params["align.lgvq.enabled"] == "True"
    assert _history(result["tracking_uri"], result["run_id"], "perf/zero_stage") == [(0, 0.0), (5, 0.0)]
    for key in ("loss/gsa", "loss/mtp", "loss/ras"):
        history = client.get_metric_history(result["run_id"], key)
        assert sorted(m.step for m in history) == [1, 5, 8], key
        assert all(math.isfinite(m.value) and m.value > 0 for m in history), key
    mtp = [m.value for m in sorted(client.get_metric_history(result["run_id"], "loss/mtp"), key=lambda m: m.step)]
    assert mtp[-1] < mtp[0]  # the masked-word predictor learns

    import vqct

    monkeypatch.chdir(tmp_path)  # where runs/ is, as a user would be
    model, cfg = vqct.load_tokenizer("alone")  # by the run's name; the alignment heads load with the model
    assert cfg.align.lgvq.enabled and model.align is not None
    images = torch.zeros(2, 3, 32, 32)
    assert model.tokenize(images).shape == (2, 8, 8)


def test_vqct_vlt_with_lgvq_then_caption_from_codes(tmp_path, shapes_dir):
    result, _ = _train(tmp_path, shapes_dir, "trainer.max_steps=8", "trainer.checkpoint_every=8",
                       "loss.disc_start=100", "trainer.image_every=8", f"text.priors_dir={tmp_path}/priors",
                       "text.adjectives=16", "text.nouns=16", "align.lgvq.enabled=true", recipe="vqct_vlt_shapes")
    assert result["family"] == "vqct_vlt" and result["codebook_usage_adj"] > 0
    from mlflow.tracking import MlflowClient

    metrics = MlflowClient(result["tracking_uri"]).get_run(result["run_id"]).data.metrics
    for key in ("loss/vlt_caption", "loss/vlt_align", "loss/gsa", "loss/mtp", "loss/ras"):
        assert key in metrics and math.isfinite(metrics[key]), key

    image = tmp_path / "scene.png"
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 30, 30)).save(image)
    proc = subprocess.run(vqct_cmd() + ["caption", result["checkpoint"], str(image), "--max-length", "12"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    captions = last_json(proc.stdout)["captions"]
    assert len(captions) == 1 and captions[0]["image"] == str(image)
    # 8 steps: any words, but those the translation module decodes from this image's codes.
    from vqct import load_tokenizer
    from vqct.data.decode import decode_image
    from vqct.text.encoders import TextEncoder

    model, cfg = load_tokenizer(result["checkpoint"])
    tokenizer = TextEncoder(cfg.text.model, cfg.align.context_length).tokenizer
    with torch.no_grad():
        codes, _, _ = model.encode(decode_image(image.read_bytes(), cfg.data.image_size).unsqueeze(0))
        ids = model.align.vlt.generate(codes, tokenizer.cls_token_id, tokenizer.sep_token_id, 12)
    assert captions[0]["caption"] == tokenizer.decode(ids[0], skip_special_tokens=True).strip()

    # vqct eval by MLflow run id: the run's checkpoint tag leads to the checkpoint.
    proc = subprocess.run(vqct_cmd() + ["eval", result["run_id"], "--data", f"{shapes_dir}/val",
                                        "--tracking-uri", result["tracking_uri"], "--batch-size", "16",
                                        "--inception-weights", str(tmp_path / "no-inception.pth")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ev = last_json(proc.stdout)
    assert ev["checkpoint"] == result["checkpoint"] and ev["samples"] == 60
    assert ev["retrieval_head"] == "vlt" and 0 <= ev["retrieval_r1"] <= ev["retrieval_r5"] <= 1
    assert ev["retrieval_r1_chance"] == pytest.approx(1 / ev["retrieval_candidates"])
    assert ev["masked_words"] > 60 and 0 <= ev["masked_word_r1"] <= 1  # LG-VQ heads are on too
    assert ev["rfid"] == f"skipped: no Inception weights at {tmp_path / 'no-inception.pth'}"
    assert ev["psnr"] > 5 and 0 < ev["codebook_usage"] <= 1 and math.isfinite(ev["code_word_mse"])
    logged = MlflowClient(result["tracking_uri"]).get_run(result["run_id"]).data.metrics
    assert logged["eval/retrieval_r1"] == pytest.approx(ev["retrieval_r1"])
    assert logged["eval/samples"] == 60

    # vqct bench eval on the same checkpoint: three passes timed, ratios from their medians.
    proc = subprocess.run(vqct_cmd() + ["bench", "eval", result["checkpoint"], "--data", f"{shapes_dir}/val",
                                        "--batch-size", "16", "--samples", "20", "--rounds", "1"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    bench = last_json(proc.stdout)
    rate = bench["images_per_s"]
    assert bench["samples"] == 32 and bench["heads"] is True  # two whole batches of 16
    assert bench["speedup_vs_plain"] == pytest.approx(rate["vqct"] / rate["plain"], rel=0.02)
    assert bench["fraction_of_forward"] == pytest.approx(rate["vqct"] / rate["forward"], rel=0.02)


def test_vqct_vlt_laion_recipe_runs_shrunk_on_cpu(tmp_path, shapes_dir):
    """The headline recipe, unchanged but for overrides: tiny model, MiniLM, CPU, shapes."""
    result, _ = _train(tmp_path, shapes_dir, "model=tiny", "data.image_size=32", "model.embed_dim=32",
                       "quantizer.code_dim=16", "quantizer.gcn_hidden=32", "text.model=all-MiniLM-L6-v2",
                       "text.adjectives=16", "text.nouns=16", f"text.priors_dir={tmp_path}/priors",
                       "align.vlt.width=64", "align.vlt.heads=2", "loss.perceptual_weight=0",
                       "trainer.use_gpu=false", "trainer.precision=fp32", "trainer.num_workers=2",
                       "data.num_workers=1", "data.random_crop=false", "data.shuffle_buffer=64",
                       "trainer.max_steps=4", "trainer.checkpoint_every=4", "trainer.image_every=4",
                       "optim.warmup_steps=0", recipe="vqct_vlt_laion")
    assert result["recipe"] == "vqct_vlt_laion" and result["family"] == "vqct_vlt" and result["steps"] == 4
    assert result["codebook_usage_adj"] > 0 and result["codebook_usage_noun"] > 0
