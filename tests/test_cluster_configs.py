"""The cluster examples in cluster/ray stay valid: the `ray up` YAML against Ray's own
cluster-config schema (offline), the KubeRay RayJob by its required structure."""

import shlex

import pytest
import yaml

from conftest import REPO

RAY_DIR = REPO / "cluster" / "ray"


def test_ray_up_config_passes_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((RAY_DIR / "aws-gpu.yaml").read_text())
    validate_config(prepare_config(config))  # raises on a schema violation
    assert config["head_node_type"] in config["available_node_types"]
    workers = config["available_node_types"]["gpu_worker"]
    assert workers["min_workers"] <= workers["max_workers"] <= config["max_workers"]


def test_ray_schema_check_catches_a_broken_config():
    from jsonschema.exceptions import ValidationError
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((RAY_DIR / "aws-gpu.yaml").read_text())
    del config["available_node_types"]["gpu_worker"]["node_config"]
    with pytest.raises(ValidationError, match="node_config"):
        validate_config(prepare_config(config))


def test_kuberay_rayjob_runs_the_headline_recipe():
    job = yaml.safe_load((RAY_DIR / "kuberay-rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:3] == ["vqct", "train", "recipes/vqct_vlt_laion.yaml"]
    assert (REPO / argv[2]).is_file()
    overrides = dict(a.split("=", 1) for a in argv[3:])
    cluster = spec["rayClusterSpec"]
    workers = cluster["workerGroupSpecs"][0]
    gpus = int(workers["rayStartParams"]["num-gpus"])
    assert int(overrides["trainer.num_workers"]) == workers["replicas"] * gpus  # one Ray Train worker per GPU
    container = workers["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == str(gpus)
    assert cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] == container["image"]


def test_the_overrides_in_the_rayjob_compose_with_the_recipe():
    from vqct.config import load_recipe

    job = yaml.safe_load((RAY_DIR / "kuberay-rayjob.yaml").read_text())
    argv = shlex.split(job["spec"]["entrypoint"])
    cfg = load_recipe(str(REPO / argv[2]), argv[3:])
    assert cfg.trainer.num_workers == 32 and cfg.tracking.uri.startswith("http://")


def test_a_brace_shard_pattern_passes_through_a_shell_unquoted():
    from vqct.config import load_recipe

    cfg = load_recipe("vqgan_shapes", ["data.train_shards=/shared/laion/{00000..09999}.tar",
                                       "data.val_shards='/v/{0..9}.tar'"])
    assert cfg.data.train_shards == "/shared/laion/{00000..09999}.tar"
    assert cfg.data.val_shards == "/v/{0..9}.tar"
