"""`vqct recipes` and `vqct compare` on a real MLflow store holding runs of several families."""

import json
import os
import subprocess

import pytest

from conftest import REPO, vqct_cmd
from vqct.records.command_output import last_json


def _store(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    runs = {}
    for recipe, family, psnrs in [("vqgan_shapes", "vqgan", [20.0, 24.0]), ("vqct_shapes", "vqct", [21.0, 26.0]),
                                  ("vqct_vlt_shapes", "vqct_vlt", [22.0, 25.0]), ("vqgan_shapes", "vqgan", [19.0, 23.0])]:
        experiment = client.get_experiment_by_name(family) or client.get_experiment(client.create_experiment(family))
        run = client.create_run(experiment.experiment_id, tags={"recipe": recipe, "family": family})
        for step, psnr in zip((400, 800), psnrs):
            client.log_metric(run.info.run_id, "val/psnr", psnr, step=step)
            client.log_metric(run.info.run_id, "codebook/usage", psnr / 30, step=step)
            client.log_metric(run.info.run_id, "loss/rec_l1", 1 / psnr, step=step)
        client.set_terminated(run.info.run_id)
        runs.setdefault(recipe, []).append(run.info.run_id)
    return uri, runs


def _vqct(tmp_path, *args):
    proc = subprocess.run(vqct_cmd() + list(args), capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return last_json(proc.stdout), proc.stderr


def test_recipes_lists_every_recipe_with_its_runs_and_best_run(tmp_path):
    uri, runs = _store(tmp_path)
    result, table = _vqct(tmp_path, "recipes", "--tracking-uri", uri)
    rows = {r["recipe"]: r for r in result["recipes"]}
    assert {"vqgan_shapes", "vqct_shapes", "vqct_vlt_shapes", "lgvq_shapes", "vqct_vlt_laion"} <= set(rows)
    assert rows["vqgan_shapes"]["runs"] == 2 and rows["vqgan_shapes"]["best_run"] == runs["vqgan_shapes"][0]
    assert rows["vqgan_shapes"]["best"] == 24.0 and rows["lgvq_shapes"]["runs"] == 0
    assert rows["vqct_shapes"]["quantizer"] == "vqct" and rows["vqct_shapes"]["codes"] == 256
    assert rows["vqct_shapes"]["code_groups"] == "128+128" and rows["vqgan_shapes"]["codes"] == 256
    assert rows["vqct_vlt_laion"]["text_model"] == "openai/clip-vit-base-patch32"
    assert "| vqct_shapes | vqct | vqct |" in table


def test_compare_resolves_recipes_to_their_best_runs_and_logs_the_plot(tmp_path):
    from mlflow.tracking import MlflowClient

    uri, runs = _store(tmp_path)
    result, table = _vqct(tmp_path, "compare", "vqgan_shapes", "vqct_shapes", runs["vqct_vlt_shapes"][0],
                          "--tracking-uri", uri, "--out", str(tmp_path / "c.png"))
    assert [r["run_id"] for r in result["runs"]] == [runs["vqgan_shapes"][0], runs["vqct_shapes"][0],
                                                     runs["vqct_vlt_shapes"][0]]
    assert [r["val/psnr"] for r in result["runs"]] == [24.0, 26.0, 25.0]
    assert (tmp_path / "c.png").stat().st_size > 10_000 and "| vqct_shapes |" in table
    client = MlflowClient(uri)
    compare_run = client.get_run(result["comparison_run_id"])
    assert compare_run.data.tags["vqct.compared_runs"].split(",") == [r["run_id"] for r in result["runs"]]


def test_compare_of_result_files_gives_mean_and_spread_per_recipe(tmp_path):
    import json

    from vqct.tracking.compare import compare_results, results_table

    rows = [("vqgan_shapes", 0, 20.0, 0.5), ("vqgan_shapes", 1, 22.0, 0.7), ("lgvq_shapes", 0, 21.0, 0.9)]
    paths = []
    for recipe, seed, psnr, usage in rows:
        path = tmp_path / f"{recipe}-seed{seed}.json"
        path.write_text("progress\n" + json.dumps({"recipe": recipe, "seed": seed, "psnr": psnr,
                                                   "codebook_usage": usage, "steps": 800}) + "\n")
        (tmp_path / f"{recipe}-seed{seed}.eval.json").write_text(json.dumps({"masked_word_r1": usage / 2}))
        paths.append(str(path))
    result = compare_results(paths)
    vqgan, lgvq = result["compare"]
    assert (vqgan["recipe"], vqgan["runs"], vqgan["seeds"]) == ("vqgan_shapes", 2, [0, 1])
    assert vqgan["psnr"] == {"mean": 21.0, "sd": pytest.approx(2 ** 0.5)}
    assert vqgan["eval_masked_word_r1"]["mean"] == pytest.approx(0.3)
    assert lgvq["psnr"] == {"mean": 21.0, "sd": None} and lgvq["runs"] == 1
    table = results_table(result["runs"])
    assert "| vqgan_shapes | 2 | 800 ± 0 | 60.0% ± 14.1%" in table and "| lgvq_shapes | 1 | 800 | 90.0%" in table


def test_compare_gives_a_row_per_codebook_size_when_one_recipe_ran_at_several(tmp_path):
    import json

    from vqct.tracking.compare import compare_results

    paths = []
    for codes, seed, psnr in [(1024, 0, 24.0), (64, 0, 21.0), (1024, 1, 26.0), (64, 1, 22.0)]:
        path = tmp_path / f"codes{codes}-seed{seed}.json"
        path.write_text(json.dumps({"recipe": "vqgan_scenes", "seed": seed, "codes": codes, "psnr": psnr}) + "\n")
        paths.append(str(path))
    big, small = compare_results(paths)["compare"]
    assert (big["recipe"], big["seeds"], big["psnr"]["mean"]) == ("vqgan_scenes (1024 codes)", [0, 1], 25.0)
    assert (small["recipe"], small["seeds"], small["psnr"]["mean"]) == ("vqgan_scenes (64 codes)", [0, 1], 21.5)


def test_the_scenes_recipes_are_the_shapes_recipes_on_the_scenes_world_with_1024_codes():
    from vqct.config import load_recipe

    for family_recipe in ("vqgan", "lgvq", "vqct", "vqct_lgvq", "vqct_vlt"):
        scenes, shapes = load_recipe(f"{family_recipe}_scenes"), load_recipe(f"{family_recipe}_shapes")
        assert (scenes.family, scenes.align) == (shapes.family, shapes.align)
        assert (scenes.data.train_shards, scenes.data.image_size, scenes.trainer.max_steps) == \
            ("data/scenes/train", 64, 800)
        if scenes.quantizer.name == "vq":
            assert scenes.quantizer.codebook_size == 1024
        else:
            assert (scenes.text.adjectives, scenes.text.nouns, scenes.text.min_count) == (512, 512, 10)
