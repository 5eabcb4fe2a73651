"""`vqct bench step` runs the real step in both precisions and prints ratios; one process is
one worker, so it runs ZeRO stage 0 unless trainer.zero_when_alone keeps the recipe's stage.
The lookup and graph benchmarks print each baseline with its ratio, and `vqct bench suite` runs
them all, a process and a JSON line each."""

import json
import os
import subprocess

import pytest
import torch

from conftest import REPO, vqct_cmd
from vqct.records.command_output import last_json


@pytest.mark.e2e
def test_bench_step_zero1_prints_both_precisions_and_ratios(tmp_path):
    proc = subprocess.run(vqct_cmd() + ["bench", "step", "vqgan_shapes", "trainer.zero_stage=1",
                                        "trainer.zero_when_alone=true", "data.batch_size=4", "--steps", "2",
                                        "--warmup", "1"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(REPO), DS_ACCELERATOR="cpu"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = last_json(proc.stdout)
    assert result["zero_stage"] == result["zero_stage_configured"] == 1
    assert result["batch_size"] == 4 and result["device"]
    fp32, bf16 = result["results"]["fp32"], result["results"]["bf16"]
    assert fp32["speedup_vs_fp32"] == 1.0
    assert bf16["speedup_vs_fp32"] == pytest.approx(bf16["images_per_s"] / fp32["images_per_s"], abs=5e-4)
    assert 0 < fp32["rec_l1"] < 2 and 0 < bf16["rec_l1"] < 2


@pytest.mark.e2e
def test_bench_step_on_two_workers_against_ddp_prints_ratios_and_halved_optimizer_state(tmp_path):
    proc = subprocess.run(vqct_cmd() + ["bench", "step", "vqgan_shapes", "data.batch_size=2", "--workers", "2",
                                        "--baseline", "ddp", "--stages", "0,2", "--steps", "1", "--warmup", "0"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(REPO), DS_ACCELERATOR="cpu"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = last_json(proc.stdout)
    assert result["workers"] == 2 and result["baseline"] == "ddp" and set(result["results"]) == {"zero0", "zero2", "ddp"}
    zero0, zero2, ddp = (result["results"][k] for k in ("zero0", "zero2", "ddp"))
    # same weights and batches: the same first loss on every path
    assert zero0["first_rec_l1"] == zero2["first_rec_l1"] == ddp["first_rec_l1"]
    assert zero0["ratio_vs_ddp"] == pytest.approx(zero0["step_ms"] / ddp["step_ms"], abs=2e-3)
    # Adam's two moments: ZeRO 0 and DDP hold them whole, ZeRO 2 holds its rank's half
    assert zero0["optimizer_state_bytes_per_rank"] == ddp["optimizer_state_bytes_per_rank"] > 0
    assert zero2["state_vs_zero0"] == pytest.approx(0.5, abs=0.01)
    assert "FutureWarning" not in proc.stderr


def test_bench_workers_go_with_the_ddp_baseline():
    for args, words in [(["--workers", "2"], "--baseline ddp goes with --workers"),
                        (["--baseline", "ddp", "--workers", "2", "--stages", "0,4"], "--stages 0,4")]:
        proc = subprocess.run(vqct_cmd() + ["bench", "step", *args], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and words in proc.stderr, proc.stderr[-2000:]


@pytest.mark.e2e
def test_bench_step_against_the_plain_loop_prints_the_ratio_and_flops(tmp_path):
    proc = subprocess.run(vqct_cmd() + ["bench", "step", "vqgan_shapes", "data.batch_size=4", "--baseline", "plain",
                                        "--steps", "2", "--warmup", "1"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(REPO), DS_ACCELERATOR="cpu"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = last_json(proc.stdout)
    vqct = result["results"]["fp32"]
    assert result["baseline"] == "plain" and list(result["results"]) == ["fp32"]
    assert (result["zero_stage"], result["zero_stage_configured"]) == (0, 2)  # the recipe's ZeRO-2, one worker
    # the two steps start from the same weights and see the same batch
    assert vqct["first_rec_l1"]["vqct"] == pytest.approx(vqct["first_rec_l1"]["plain"], abs=1e-5)
    assert vqct["ratio_vs_plain"] == pytest.approx(vqct["step_ms"] / vqct["plain"]["step_ms"], abs=2e-3)
    assert vqct["flops_per_step"] > 1e8  # forward and backward of both models, by torch's counter
    assert vqct["achieved_tflops"] == pytest.approx(vqct["flops_per_step"] / vqct["step_ms"] / 1e9, rel=0.01)


def test_bench_step_measures_each_variant_against_the_recipe(tmp_path):
    proc = subprocess.run(vqct_cmd() + ["bench", "step", "vqgan_shapes", "data.batch_size=2", "trainer.zero_stage=0",
                                        "--baseline", "variants", "--vary", "trainer.channels_last=true",
                                        "--vary", "optim.adam=foreach", "--steps", "2", "--warmup", "1"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(REPO), DS_ACCELERATOR="cpu"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = last_json(proc.stdout)
    runs = result["results"]
    assert list(runs) == ["base", "trainer.channels_last=true", "optim.adam=foreach"]
    assert runs["base"]["ratio_vs_base"] == 1.0 and result["codebook_size"] == 256
    for name, run in runs.items():  # same weights, same batch: the same first loss
        assert run["first_rec_l1"] == pytest.approx(runs["base"]["first_rec_l1"], abs=1e-5), name
        assert run["ratio_vs_base"] == pytest.approx(run["step_ms"] / runs["base"]["step_ms"], abs=2e-3)


def test_bench_variants_need_a_vary():
    proc = subprocess.run(vqct_cmd() + ["bench", "step", "--baseline", "variants"], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 2 and "--vary" in proc.stderr


def test_bench_plain_baseline_is_fp32_only():
    proc = subprocess.run(vqct_cmd() + ["bench", "step", "--baseline", "plain", "--precisions", "bf16"],
                          capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 2 and "give --precisions fp32" in proc.stderr and "Traceback" not in proc.stderr


def test_bench_rejects_unknown_precision():
    proc = subprocess.run(vqct_cmd() + ["bench", "step", "--precisions", "fp8"], capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 2 and "--precisions" in proc.stderr and "Traceback" not in proc.stderr


def _bench(*args):
    proc = subprocess.run(vqct_cmd() + ["bench", *args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return last_json(proc.stdout)


# The printed ratios are rounded to 3 decimals: compare them at that precision, not relatively
# (a ratio of 0.05 rounded is 1% off, and on a loaded machine any ratio can be that small).


def test_bench_lookup_prints_each_baseline_and_its_ratio():
    result = _bench("lookup", "--shapes", "300,700,8;64,5000,32", "--reps", "1", "--memory-mb", "1")
    assert result["bench"] == "lookup" and result["ours"] == "chunked pytorch" and result["device"]
    first, second = result["results"]
    assert (first["N"], first["K"], first["D"]) == (300, 700, 8)
    for row in result["results"]:
        for name in ("cdist", "expanded", "vector_quantize_pytorch"):
            assert row[f"speedup_vs_{name}"] == pytest.approx(row[name]["ms"] / row["ours"]["ms"], abs=5e-4)
        assert row["vector_quantize_pytorch_same_indices"] is True
        assert row["ours_time_vs_expanded"] == pytest.approx(row["ours"]["ms"] / row["expanded"]["ms"], abs=5e-4)
    # 1 MiB budget: the 64 x 5000 fp32 block (1.2 MiB, twice for its temporaries) is chunked.
    assert second["ours_within_budget"] is True


def test_bench_gcn_prints_sparse_and_scatter_ratios():
    result = _bench("gcn", "--graphs", "500,3000", "--reps", "1")
    assert len(result["results"]) == 2  # two widths
    for row in result["results"]:
        assert row["nodes"] == 500 and row["edges"] <= 3500  # duplicates merged, self-loops added
        assert row["speedup_vs_sparse_mm"] == pytest.approx(row["sparse_mm"]["ms"] / row["ours"]["ms"], abs=5e-4)
        assert row["speedup_vs_index_add_fwd_bwd"] > 0


def test_bench_lookup_rejects_a_malformed_shape():
    proc = subprocess.run(vqct_cmd() + ["bench", "lookup", "--shapes", "10,20"], capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 2 and "--shapes: '10,20'" in proc.stderr and "Traceback" not in proc.stderr


def test_bench_step_refuses_alignment_recipes_with_a_fix():
    proc = subprocess.run(vqct_cmd() + ["bench", "step", "lgvq_shapes"], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 2 and "align.lgvq.enabled=false" in proc.stderr and "Traceback" not in proc.stderr


def test_bench_data_times_raw_and_resized_shards_of_the_same_images(tmp_path):
    import tarfile
    from io import BytesIO

    from PIL import Image

    result = _bench("data", "--out", str(tmp_path / "corpus"), "--images", "24", "--per-shard", "8",
                    "--image-size", "32", "--batch-size", "4", "--step-ms", "50", "--workers", "0,1")
    assert result["demand_images_per_s"] == 80.0 and result["mean_source_megapixels"] > 0.1
    for variant in ("raw", "resized"):
        assert [r["workers"] for r in result["results"][variant]] == [0, 1]
        for row in result["results"][variant]:
            assert row["images_per_s"] > 0
            assert row["supply_vs_demand"] == pytest.approx(row["images_per_s"] / 80.0, abs=2e-3)
    for raw, resized in zip(result["results"]["raw"], result["results"]["resized"]):
        assert resized["speedup_vs_raw"] == pytest.approx(resized["images_per_s"] / raw["images_per_s"], abs=2e-3)

    def sizes(variant):
        found = []
        for shard in sorted((tmp_path / "corpus" / variant).glob("*.tar")):
            with tarfile.open(shard) as tar:
                found += [Image.open(BytesIO(tar.extractfile(m).read())).size for m in tar if m.name.endswith(".jpg")]
        return found

    raw, resized = sizes("raw"), sizes("resized")
    assert len(raw) == len(resized) == 24 and set(resized) == {(32, 32)}
    assert min(min(s) for s in raw) >= 256  # LAION-like sources: the shorter side is at least 256 px


def test_bench_data_rejects_bad_workers(tmp_path):
    proc = subprocess.run(vqct_cmd() + ["bench", "data", "--out", str(tmp_path), "--workers", "two"],
                          capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 2 and "--workers two" in proc.stderr and "Traceback" not in proc.stderr


def test_bench_eval_rejects_bad_numbers_and_a_non_checkpoint(tmp_path):
    for args, says in ((["--rounds", "0"], "must be positive"), ([], "a directory, but not a trained tokenizer")):
        proc = subprocess.run(vqct_cmd() + ["bench", "eval", str(tmp_path), "--data", str(tmp_path), *args],
                              capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)))
        assert proc.returncode == 2 and says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("layout", [["--codes", "64", "--grid", "4"], ["--adj-noun", "16,24,2", "--grid", "4"]],
                         ids=["one-index", "adj-noun"])
def test_bench_generate_times_the_step_against_plain_and_the_cache_against_recompute(layout):
    proc = subprocess.run(vqct_cmd() + ["bench", "generate", "generator_shapes", "data.batch_size=4",
                                        "generator.n_layer=2", "generator.n_embd=32", *layout, "--steps", "2",
                                        "--warmup", "1", "--samples", "2"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = last_json(proc.stdout)
    train, sample = result["train"], result["sample"]
    assert train["first_loss"]["vqct"] == train["first_loss"]["plain"]  # same weights, same batch, same loss
    assert train["ratio_vs_plain"] > 0 and sample["cache_speedup"] > 0
    assert sample["same_codes"] is True and result["layout"]["height"] == 4


def test_bench_suite_keeps_a_line_per_step_and_names_the_steps_to_rerun(tmp_path):
    out = tmp_path / "suite.jsonl"
    suite = vqct_cmd() + ["bench", "suite", "--quick", "--out", str(out), "--only", "lookup-fp32,gcn"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(suite, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert last_json(proc.stdout)["failed"] == []
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    machine, lookup, gcn = lines
    assert machine["step"] == "machine" and machine["torch"] == torch.__version__ and machine["device"]
    assert (lookup["step"], lookup["rc"], lookup["result"]["bench"]) == ("lookup-fp32", 0, "lookup")
    assert (gcn["step"], gcn["rc"], gcn["result"]["bench"]) == ("gcn", 0, "gcn")
    assert lookup["result"]["results"][0]["vector_quantize_pytorch_same_indices"] is True
    # a deadline already past: nothing runs, the run's lines are appended to the earlier ones,
    # and the command fails naming what to rerun
    proc = subprocess.run(suite + ["--deadline-s", "0.001"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 1 and last_json(proc.stdout)["rerun"] == "--only lookup-fp32,gcn"
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["step"] for line in lines] == ["machine", "lookup-fp32", "gcn"] * 2
    assert all(line["rc"].startswith("skipped") for line in lines[4:])


def test_bench_suite_rejects_an_unknown_step():
    proc = subprocess.run(vqct_cmd() + ["bench", "suite", "--only", "lookup-fp32,nope"], capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 2 and "no step named nope" in proc.stderr and "Traceback" not in proc.stderr
