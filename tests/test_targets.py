"""One resolver for "a trained tokenizer": every command that takes one, and vqct.load_tokenizer,
accept a checkpoint directory, a run directory, a run name, an MLflow run id, models:/NAME/VERSION,
models:/NAME@ALIAS and an exported directory, and refuse anything else with one line (exit 2).
Real DeepSpeed checkpoint (one rank, so ZeRO stage 0), real MLflow sqlite store and registry."""

import dataclasses

import pytest
import torch

from vqct.config import config_to_dict, load_recipe
from vqct.records.command_output import last_json

RUN_NAME = "vqgan_shapes-toy"
COMMANDS = {  # each command that takes a trained tokenizer -> the arguments it needs after it
    ("eval",): ["--data", "d"],
    ("export",): ["--out", "o"],
    ("tokenize",): ["--data", "d", "--out", "o"],
    ("caption",): ["image.png"],
    ("bench", "eval"): ["--data", "d"],
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, single_process_group):
    """A one-rank checkpoint in runs/<run>/, its MLflow run, registry version 1 (alias best)
    and an exported directory."""
    from mlflow.tracking import MlflowClient

    from vqct.models.discriminator import PatchDiscriminator
    from vqct.records.run_record import write_run
    from vqct.records.tags import RUN_CHECKPOINT_TAG
    from vqct.tokenizer import build_tokenizer
    from vqct.tokenizer.pretrained import export
    from vqct.tracking.mlflow_run import experiment_id
    from vqct.tracking.registry import register_run
    from vqct.train.checkpoint import save_checkpoint
    from vqct.train.engines import build_engines, zero_stage_for

    root = tmp_path_factory.mktemp("targets")
    uri = f"sqlite:///{root}/mlflow.db"
    cfg = load_recipe("vqgan_shapes", ["loss.perceptual_weight=0", "data.image_size=32", f"tracking.uri={uri}"])
    torch.manual_seed(0)
    trainer = dataclasses.replace(cfg.trainer, zero_stage=zero_stage_for(cfg.trainer, world=1))
    gen, disc = build_engines(build_tokenizer(cfg), PatchDiscriminator(3, 8, 2), trainer, cfg.optim, 2)
    run_dir = root / "runs" / RUN_NAME
    checkpoint = run_dir / "checkpoint_2026-12-03_00-00-00.000000"
    save_checkpoint(checkpoint, gen, disc, {"step": 1, "config": config_to_dict(cfg)}, {}, 0)
    client = MlflowClient(uri, registry_uri=uri)
    run_id = client.create_run(experiment_id(client, "vqgan", uri),
                               tags={"vqct.run_name": RUN_NAME, RUN_CHECKPOINT_TAG: str(checkpoint)}).info.run_id
    write_run(run_dir, {"mlflow_run_id": run_id, "recipe": cfg.recipe, "tracking_uri": uri})
    assert register_run(uri, run_id, cfg, str(checkpoint)) == "1"
    client.set_registered_model_alias("vqgan_shapes", "best", "1")
    export(str(checkpoint), str(root / "exported"))
    weights = {k: v.detach().clone() for k, v in gen.module.state_dict().items()}
    return {"root": root, "uri": uri, "checkpoint": checkpoint, "run_dir": run_dir, "run_id": run_id,
            "exported": root / "exported", "weights": weights, "stage": trainer.zero_stage}


def _forms(trained) -> dict[str, str]:
    return {"checkpoint": str(trained["checkpoint"]), "run_dir": str(trained["run_dir"]), "run_name": RUN_NAME,
            "run_id": trained["run_id"], "model_version": "models:/vqgan_shapes/1",
            "model_alias": "models:/vqgan_shapes@best", "exported": str(trained["exported"])}


@pytest.fixture
def inside(trained, monkeypatch):
    """In the directory that holds runs/ and the tracking store, as a user running commands."""
    monkeypatch.chdir(trained["root"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained["uri"])
    return trained


def test_every_command_resolves_every_form(inside):
    from vqct.cli.main import build_parser, resolve_target

    for form, target in _forms(inside).items():
        for command, rest in COMMANDS.items():
            resolved = resolve_target(build_parser().parse_args([*command, target, *rest]))
            expected = "model_uri" if form.startswith("model_") else form
            assert resolved.form == expected, (command, form)
            if form == "exported":
                assert resolved.path(heads=True) == inside["exported"].resolve()
                continue
            assert resolved.path(heads=True) == inside["checkpoint"].resolve(), (command, form)
            assert resolved.run_id == inside["run_id"], (command, form)


def test_load_tokenizer_gives_the_same_codes_from_every_form(inside):
    import vqct

    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    codes = {}
    for form, target in _forms(inside).items():
        model, cfg = vqct.load_tokenizer(target, heads=False)
        assert cfg.recipe == "vqgan_shapes"
        codes[form] = model.tokenize(images)
    reference = codes.pop("checkpoint")
    for form, got in codes.items():
        assert torch.equal(got, reference), form
    fetched = vqct.load_tokenizer("models:/vqgan_shapes@best", heads=False)  # downloaded, not the checkpoint
    assert torch.equal(fetched[0].tokenize(images), reference)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_target_in_no_accepted_form_is_one_line_and_exit_2(inside, command, capsys):
    from vqct.cli.main import main

    assert main([*command, "no-such-run", *COMMANDS[command]]) == 2
    err = capsys.readouterr()
    lines = [line for line in err.err.splitlines() if line.strip()]
    assert len(lines) == 1 and err.out == ""
    assert lines[0].startswith("vqct: error: no-such-run: not a trained tokenizer here; give a checkpoint "
                               "directory (runs/<run>/checkpoint_<time>), a run directory (runs/<run>), either as "
                               "s3://BUCKET/PREFIX/<run>[/checkpoint_<time>], a run name, an MLflow run id, models:/<name>/<version>, models:/<name>@<alias>, or an "
                               "exported tokenizer directory"), lines[0]


def test_export_of_a_registry_alias_writes_a_tokenizer(inside, tmp_path, capsys):
    from vqct.cli.main import main

    assert main(["export", "models:/vqgan_shapes@best", "--out", str(tmp_path / "again")]) == 0
    result = last_json(capsys.readouterr().out)
    assert result["out"] == str(tmp_path / "again") and (tmp_path / "again" / "config.json").is_file()


def test_caption_of_an_exported_tokenizer_names_what_it_needs(inside, capsys):
    from vqct.cli.main import main

    assert main(["caption", str(inside["exported"]), "x.png"]) == 2
    assert "an exported tokenizer keeps no translation module" in capsys.readouterr().err


# ---- ZeRO where it pays ----------------------------------------------------------------------
def test_one_worker_runs_stage_0_and_a_resume_keeps_its_checkpoints_kind():
    from vqct.train.engines import zero_stage_for

    trainer = load_recipe("vqgan_shapes").trainer
    assert trainer.zero_stage == 2
    assert zero_stage_for(trainer, world=1) == 0
    assert zero_stage_for(trainer, world=2) == 2
    assert zero_stage_for(dataclasses.replace(trainer, zero_when_alone=True), world=1) == 2
    assert zero_stage_for(trainer, world=1, restoring_sharded=True) == 2  # a run checkpointed at ZeRO-2
    assert zero_stage_for(trainer, world=2, restoring_sharded=False) == 0


def test_a_stage_0_checkpoint_consolidates_to_the_exact_fp32_weights(trained):
    from vqct.records.deepspeed_files import fp32_weights, zero_sharded

    assert trained["stage"] == 0 and not zero_sharded(trained["checkpoint"] / "generator")
    got = fp32_weights(trained["checkpoint"] / "generator")
    assert got.keys() == trained["weights"].keys()
    for name, tensor in trained["weights"].items():
        assert torch.equal(got[name], tensor), name


def test_a_bf16_stage_0_checkpoint_gives_the_fp32_master_weights(tmp_path, single_process_group):
    """In bf16 the module holds bf16 copies; the weights that train are the optimizer's fp32
    masters, which one step moves by less than a bf16 step can hold."""
    import deepspeed

    from vqct.records.deepspeed_files import TAG, fp32_weights

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8))
    model.register_buffer("scale", torch.full((8,), 0.5))  # a buffer comes back too, by name
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=1e-4), config={
        "train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 0}, "bf16": {"enabled": True},
        "zero_allow_untested_optimizer": True})
    engine.backward(engine(torch.randn(4, 8, dtype=torch.bfloat16)).float().square().mean())
    engine.step()
    engine.save_checkpoint(str(tmp_path), tag=TAG)
    masters = [t for group in engine.optimizer.fp32_groups for t in group]
    names = [name for name, _ in model.named_parameters()]
    got = fp32_weights(tmp_path)
    for name, master in zip(names, masters, strict=True):
        assert got[name].dtype == torch.float32 and torch.equal(got[name], master), name
    module = dict(model.state_dict())
    assert not torch.equal(got["0.weight"], module["0.weight"].float())  # not the bf16 copy
    assert torch.equal(got["scale"], torch.full((8,), 0.5))
