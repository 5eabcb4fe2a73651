"""The typed configuration: recipes become dataclasses, stored configs of older versions still
load, and what crosses the Ray boundary round-trips."""

import dataclasses
import re

import pytest
import torch

from vqct.config import (LGVQConfig, VQConfig, VQCTConfig, config_from_dict, config_to_dict, flatten,
                         load_recipe)
from vqct.errors import UserError
from vqct.quantize import TransferQuantizer, VectorQuantizer, as_metrics
from vqct.train.spec import RunSummary


def test_each_recipe_becomes_typed_sections_with_the_quantizer_its_name_chooses():
    vq, vqct, lgvq = load_recipe("vqgan_shapes"), load_recipe("vqct_shapes"), load_recipe("lgvq_shapes")
    assert type(vq.quantizer) is VQConfig and vq.quantizer.codebook_size == 256
    assert type(vqct.quantizer) is VQCTConfig and (vqct.quantizer.code_dim, vqct.quantizer.gcn_hidden) == (16, 64)
    assert not hasattr(vqct.quantizer, "codebook_size")
    assert lgvq.align.lgvq == LGVQConfig(enabled=True, gsa_weight=1e-3, mtp_weight=1e-2, ras_weight=1e-4)
    assert lgvq.align.weights() == {"gsa": 1e-3, "mtp": 1e-2, "ras": 1e-4}
    assert (vq.data.image_size, vq.token_grid, vq.model.downsampling) == (32, 8, 4)


def test_the_dict_form_round_trips_and_flattens_to_the_mlflow_params():
    cfg = load_recipe("vqct_shapes", ["seed=3"])
    assert config_from_dict(config_to_dict(cfg)) == cfg
    flat = flatten(cfg)
    assert flat["seed"] == 3 and flat["quantizer.code_dim"] == 16 and "quantizer.codebook_size" not in flat
    assert flat["align.lgvq.gsa_weight"] == 1e-3 and "align.lgvq.alpha" not in flat


def test_a_stored_config_of_an_older_version_loads_with_todays_keys():
    """Checkpoints written before the quantizer sections and the LG-VQ renames."""
    old = config_to_dict(load_recipe("vqct_shapes"))
    old["quantizer"] = {**old["quantizer"], "codebook_size": 256}  # one flat section for every quantizer
    with pytest.raises(UserError, match="quantizer.codebook_size is not read by the vqct quantizer"):
        config_from_dict(old)
    old["align"]["lgvq"] = {"enabled": True, "alpha": 0.5, "beta": 0.25, "gamma": 0.125}
    with pytest.raises(UserError, match="align.lgvq.alpha was renamed align.lgvq.gsa_weight"):
        config_from_dict(old)
    cfg = config_from_dict(old, stored=True)
    assert type(cfg.quantizer) is VQCTConfig and cfg.quantizer.code_dim == 16
    assert (cfg.align.lgvq.gsa_weight, cfg.align.lgvq.mtp_weight, cfg.align.lgvq.ras_weight) == (0.5, 0.25, 0.125)
    # Trained before align.lgvq.mask_padding existed, i.e. with padding keys masked: it stays so.
    assert cfg.align.lgvq.mask_padding is True
    assert config_from_dict(config_to_dict(load_recipe("lgvq_shapes")), stored=True).align.lgvq.mask_padding is False


def test_an_interpolation_may_name_a_key_the_recipe_leaves_to_its_default(tmp_path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("defaults:\n  - model: tiny\n  - _self_\noptim:\n  lr: ${mul:${trainer.grad_accum},2.0e-3}\n")
    assert load_recipe(str(recipe)).optim.lr == pytest.approx(2e-3)  # trainer.grad_accum: the default 1


def test_the_run_summary_is_printed_flat_and_read_back():
    summary = RunSummary(run_id="r", steps=8, codebook_usage=0.5,
                         codebook_groups={"codebook_usage_adj": 1.0, "perplexity_adj": 3.0})
    flat = summary.to_json()
    keys = list(flat)
    assert keys.index("codebook_usage") < keys.index("codebook_usage_adj") < keys.index("perplexity")
    assert "codebook_groups" not in flat and RunSummary.from_json(flat) == summary
    assert [f.name for f in dataclasses.fields(RunSummary)][-3:] == ["checkpoint", "model_version", "tracking_uri"]


def test_usage_statistics_for_one_codebook_group_and_for_several():
    vq = VectorQuantizer(4, 2)
    stats = vq.usage_stats({"codes": torch.tensor([2, 0, 2, 0])})
    assert stats == {"codebook_usage": 0.5, "perplexity": pytest.approx(2.0)}
    assert as_metrics(stats) == {"codebook/usage": 0.5, "codebook/perplexity": pytest.approx(2.0)}
    words = torch.randn(6, 8)
    vqct = TransferQuantizer(words[:2], words[2:], torch.tensor([[0], [2]]), torch.ones(1), 4, 8)
    counts = {"adj": torch.tensor([5, 0]), "noun": torch.tensor([1, 1, 1, 1])}
    stats = vqct.usage_stats(counts, perplexity_counts={"adj": torch.tensor([1, 1]), "noun": counts["noun"]})
    assert stats == {"codebook_usage_adj": 0.5, "perplexity_adj": pytest.approx(2.0),
                     "codebook_usage_noun": 1.0, "perplexity_noun": pytest.approx(4.0),
                     "codebook_usage": 5 / 6}


def test_a_value_the_recipe_leaves_to_the_user_is_not_filled_from_the_defaults():
    """`???` in vqct_coco: the schema's default shard path must not stand in for it."""
    with pytest.raises(UserError, match="needs a value for data.train_shards, data.val_shards"):
        load_recipe("vqct_coco")


@pytest.mark.parametrize("override,needle", [
    ("text.max_captions=0", "text.max_captions=0 must be a positive number"),
    ("text.knn=-1", "text.knn=-1 must be 0 or more"),
    ("text.prompt_adj=a photo", "text.prompt_adj='a photo' must hold one '{}'"),
    ("align.vlt.heads=3", "align.vlt.width=128 must be divisible by align.vlt.heads=3"),
    ("align.vlt.temperature=0", "align.vlt.temperature=0.0 must be a positive number"),
    ("align.lgvq.mtp_weight=-1", "align.lgvq.mtp_weight=-1.0 must be 0 or more"),
    ("loss.lpips_net=resnet", "loss.lpips_net='resnet' must be one of: vgg, alex, squeeze"),
    ("loss.lpips_backbone=no/such/file.pth", "loss.lpips_backbone='no/such/file.pth' is neither"),
])
def test_every_section_is_checked_when_the_recipe_loads(override, needle):
    """Text, VLT and the LPIPS settings fail on the driver, before Ray or a worker starts."""
    from vqct.config import load_recipe

    with pytest.raises(UserError) as caught:
        load_recipe("vqct_vlt_shapes", [override])
    assert needle in str(caught.value)


def test_the_tracking_uri_is_the_explicit_key_then_the_environment_then_the_default(monkeypatch):
    from vqct.config import load_recipe
    from vqct.config.schema import DEFAULT_TRACKING_URI

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert load_recipe("vqgan_shapes").tracking.uri == DEFAULT_TRACKING_URI == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert load_recipe("vqgan_shapes").tracking.uri == "http://127.0.0.1:5999"
    assert load_recipe("vqct_vlt_laion", ["data.train_shards=x", "data.val_shards=x"]).tracking.uri == \
        "http://127.0.0.1:5999"
    explicit = load_recipe("vqgan_shapes", ["tracking.uri=sqlite:///other.db"]).tracking.uri
    assert explicit == "sqlite:///other.db"


def test_the_random_streams_are_the_ones_the_recorded_results_used():
    """docs/results.md's seeded figures were made with these; a change here changes them all."""
    from vqct.seeds import heads_seed, mask_seed, rank_seed

    assert heads_seed(0) == 1_000_003 and heads_seed(2) == 1_000_005
    assert rank_seed(3, 1) == 4
    assert mask_seed(0, 0) == 1 and mask_seed(2, 1) == 2 * 1_000_003 + 7919 + 1


def test_every_recipe_logs_into_its_familys_experiment():
    """README and docs/cluster.md promise one MLflow experiment per family."""
    from vqct.config import load_recipe, recipes_dir

    for path in sorted(recipes_dir().glob("*.yaml")):
        try:
            cfg = load_recipe(path.stem)
        except UserError:  # a recipe that needs its shards named
            cfg = load_recipe(path.stem, ["data.train_shards=x", "data.val_shards=x"])
        assert cfg.tracking.experiment == cfg.family, path.name


@pytest.mark.parametrize("override,message", [
    ("condition.classes=3", "condition.classes is not read by the caption condition"),
    ("trainer.channels_last=true", "trainer.channels_last is read by tokenizer recipes only"),
    ("data.train_shards=x", "data.train_shards is not a config key (data has: train_codes"),
    ("generator.n_embd=130", "must be a multiple of generator.n_head"),
])
def test_a_generator_recipe_refuses_what_it_does_not_read(override, message):
    with pytest.raises(UserError, match=re.escape(message)):
        load_recipe("generator_shapes", [override])


def test_a_generator_recipe_is_typed_by_its_family_and_condition():
    from vqct.config.generator import GeneratorConfig, SegmentationConditionConfig

    cfg = load_recipe("generator_shapes", ["condition.name=segmentation", "~condition.tokens"])
    assert isinstance(cfg, GeneratorConfig) and isinstance(cfg.condition, SegmentationConditionConfig)
    assert cfg.condition.classes == 11 and cfg.tracking.experiment == "generator"
