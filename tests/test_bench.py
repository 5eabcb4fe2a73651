"""`vqct bench step` runs the real step under ZeRO-1 in both precisions and prints ratios."""

import json
import os
import subprocess

import pytest

from conftest import REPO, vqct_cmd


@pytest.mark.e2e
def test_bench_step_zero1_prints_both_precisions_and_ratios(tmp_path):
    proc = subprocess.run(vqct_cmd() + ["bench", "step", "vqgan_shapes", "trainer.zero_stage=1",
                                        "data.batch_size=4", "--steps", "2", "--warmup", "1"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(REPO), DS_ACCELERATOR="cpu"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["zero_stage"] == 1 and result["batch_size"] == 4 and result["device"]
    fp32, bf16 = result["results"]["fp32"], result["results"]["bf16"]
    assert fp32["speedup_vs_fp32"] == 1.0
    assert bf16["speedup_vs_fp32"] == pytest.approx(bf16["images_per_s"] / fp32["images_per_s"], rel=0.01)
    assert 0 < fp32["rec_l1"] < 2 and 0 < bf16["rec_l1"] < 2


def test_bench_rejects_unknown_precision():
    proc = subprocess.run(vqct_cmd() + ["bench", "step", "--precisions", "fp8"], capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 2 and "--precisions" in proc.stderr and "Traceback" not in proc.stderr
