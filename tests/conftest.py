"""Shared fixtures. Everything runs offline and on loopback; servers are started by tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Before anything imports ray, mlflow, transformers or deepspeed.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ["RAY_AUTH_MODE"] = "disabled"  # explicit: never depend on an earlier cluster's token
os.environ.pop("RAY_ADDRESS", None)
# The Triton kernels run on CPU tensors through Triton's interpreter when there is no GPU;
# it must be set before any @triton.jit kernel is defined.
if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"

REPO = Path(__file__).resolve().parents[1]


def vqct_cmd() -> list[str]:
    return [sys.executable, "-m", "vqct"]


def fresh_python_last_line(code: str, cwd: Path) -> str:
    """Run CODE in a new interpreter (nothing of this test process imported); its last printed line."""
    import subprocess

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    """A small shapes dataset: 240 train samples in 6 shards (5 x 44 + 20) and 60 val in 2."""
    from vqct.data.shapes import write_shapes

    out = tmp_path_factory.mktemp("shapes")
    write_shapes(out, num_samples=300, samples_per_shard=44, image_size=32, seed=7, val_fraction=0.2)
    return out


@pytest.fixture(scope="session")
def single_process_group():
    """torch.distributed with one gloo rank, for DeepSpeed engines in this process. Once per
    session: DeepSpeed keeps the first group it saw, so a second one would not be its own."""
    import socket

    import deepspeed
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    saved = {k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE")}
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    deepspeed.init_distributed(dist_backend="gloo")
    yield
    dist.destroy_process_group()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def inception_file(tmp_path_factory):
    """torch-fidelity's Inception-v3 with random weights, saved as its weights file: the real
    extractor and FID path without the download (the values it gives mean nothing)."""
    from unittest import mock

    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    torch.manual_seed(0)
    with mock.patch("torch.load", return_value={}), mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict"):
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path="unused")
    path = tmp_path_factory.mktemp("inception") / "inception.pth"
    torch.save(net.state_dict(), path)
    return path
