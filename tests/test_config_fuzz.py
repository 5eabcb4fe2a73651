"""Property test over bad overrides: every one is refused with exit code 2 and one line
that names the key, before any Ray worker could start."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vqct.launch.ray_driver as ray_driver
from vqct.cli.main import main

POSITIVE_INTS = ["data.image_size", "data.batch_size", "data.val_batches", "model.ch", "model.z_channels",
                 "model.embed_dim", "model.num_res_blocks", "quantizer.codebook_size", "quantizer.usage_window",
                 "trainer.max_steps", "trainer.num_workers", "trainer.cpus_per_worker", "trainer.grad_accum",
                 "trainer.checkpoint_every", "trainer.log_every", "trainer.image_every",
                 "trainer.keep_checkpoints", "trainer.max_bad_steps"]
NON_NEGATIVE_INTS = ["data.num_workers", "data.shuffle_buffer", "trainer.max_failures", "loss.disc_start",
                     "optim.warmup_steps"]
SECTIONS = ["data", "model", "quantizer", "text", "loss", "optim", "trainer", "tracking"]
WORDS = st.from_regex(r"[a-z][a-z_]{2,10}", fullmatch=True).filter(
    lambda w: w not in {"true", "false", "null", "nan", "inf", "yes", "no", "on", "off"})


@st.composite
def bad_override(draw):
    """(recipe, override, the key the error must name)."""
    kind = draw(st.sampled_from(["unknown", "wrong_type", "not_positive", "negative", "indivisible",
                                 "width_mismatch", "zero_workers", "bad_choice"]))
    if kind == "unknown":
        key = f"{draw(st.sampled_from(SECTIONS))}.{draw(WORDS)}_x"
        return "vqgan_shapes", f"{key}={draw(st.integers(-5, 5))}", key
    if kind == "wrong_type":
        key = draw(st.sampled_from(POSITIVE_INTS + NON_NEGATIVE_INTS))
        value = draw(st.one_of(WORDS, st.sampled_from(["1.5", "2e-3", "[1,2]"])))
        return "vqgan_shapes", f"{key}={value}", key
    if kind == "not_positive":
        key = draw(st.sampled_from(POSITIVE_INTS))
        return "vqgan_shapes", f"{key}={draw(st.integers(-10**6, 0))}", key
    if kind == "negative":
        key = draw(st.sampled_from(NON_NEGATIVE_INTS))
        return "vqgan_shapes", f"{key}={draw(st.integers(-10**6, -1))}", key
    if kind == "indivisible":  # vqgan_shapes downsamples by 4
        size = draw(st.integers(1, 4096).filter(lambda n: n % 4))
        return "vqgan_shapes", f"data.image_size={size}", "data.image_size"
    if kind == "width_mismatch":  # vqct: the map's width is the adjective + noun halves
        dim = draw(st.integers(1, 2048).filter(lambda n: n != 2 * 32))
        return "vqct_shapes", f"model.embed_dim={dim}", "model.embed_dim"
    if kind == "zero_workers":
        return "vqgan_shapes", f"trainer.num_workers={draw(st.integers(-4, 0))}", "trainer.num_workers"
    key, value = draw(st.sampled_from([("trainer.precision", "fp8"), ("trainer.zero_stage", "4"),
                                       ("quantizer.name", "kmeans"), ("trainer.zero_stage", "-1")]))
    return "vqgan_shapes", f"{key}={value}", key


@pytest.fixture
def no_worker_may_start(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a bad config reached the point of starting Ray workers")

    monkeypatch.setattr(ray_driver, "connect", refuse)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=bad_override())
def test_every_bad_override_exits_2_with_one_line_naming_the_key(case, shapes_dir, tmp_path, capsys,
                                                                  no_worker_may_start):
    recipe, override, key = case
    capsys.readouterr()
    code = main(["train", recipe, f"data.train_shards={shapes_dir}/train", f"data.val_shards={shapes_dir}/val",
                 f"trainer.storage_path={tmp_path}/runs", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
                 override])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, (override, err)
    assert len(lines) == 1 and lines[0].startswith("vqct: error: "), (override, err)
    assert key in lines[0], (override, lines[0])
    assert "Traceback" not in err and not out
