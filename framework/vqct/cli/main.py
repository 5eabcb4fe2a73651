"""`vqct` entry point: parse, dispatch, and turn user errors into one line + exit code 2.

Commands that produce figures print them as one JSON object on the last stdout line;
progress goes to stderr.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys

from vqct.errors import TrainingFailed, UserError
from vqct.launch.signals import interrupt_on_sigterm


def _cmd_data_shapes(args: argparse.Namespace) -> dict:
    from vqct.data.shapes import write_shapes

    for name in ("num_samples", "samples_per_shard", "image_size"):
        if getattr(args, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be a positive number")
    if not 0 <= args.val_fraction < 1:
        raise UserError("--val-fraction must be in [0, 1)")
    return write_shapes(args.out, args.num_samples, args.samples_per_shard, args.image_size,
                        args.seed, args.val_fraction)


def _cmd_data_scenes(args: argparse.Namespace) -> dict:
    from vqct.data.scenes.write import ScenesSettings, write_scenes

    settings = ScenesSettings(args.num_samples, args.val, args.test, args.test_compositional, args.image_size,
                              args.samples_per_shard, args.seed)
    return write_scenes(args.out, settings, max(1, args.workers))


def _cmd_data_pack(args: argparse.Namespace) -> dict:
    from vqct.data.pack import PackSettings, pack, read_source

    needs = {"folder": ["images"], "coco": ["annotations", "images"], "cub": ["images", "text"], "table": ["table"]}
    missing = [f"--{name.replace('_', '-')}" for name in needs[args.layout] if not getattr(args, name)]
    if missing:
        raise UserError(f"vqct data pack {args.layout} needs {' and '.join(missing)}")
    if args.workers <= 0:
        raise UserError("--workers must be a positive number")
    settings = PackSettings(val_fraction=args.val_fraction, seed=args.seed, split=args.split,
                            samples_per_shard=args.samples_per_shard, shard_bytes=args.shard_bytes,
                            resize=args.resize, crop=args.center_crop, image_format=args.format,
                            quality=args.quality)
    settings.check()
    items, skipped = read_source(args.layout, args)
    return pack(items, args.out, settings, args.workers, args.force, skipped)


def _cmd_data_inspect(args: argparse.Namespace) -> dict:
    from vqct.data.inspect import inspect_shards

    return inspect_shards(args.shards, args.max_samples)


def _cmd_data_tokenize(args: argparse.Namespace) -> dict:
    from vqct.launch.tokenize_shards import tokenize_to_shards

    return tokenize_to_shards(args.target, args.shards, args.out, args.batch_size, args.tracking_uri)


def _cmd_downstream(args: argparse.Namespace) -> dict:
    from vqct.config.downstream import downstream_config
    from vqct.downstream.run import run_downstream

    return run_downstream(args.task, args.train, args.eval, downstream_config(args.task, args.settings),
                          args.tracking_uri)


def _cmd_downstream_table(args: argparse.Namespace) -> dict:
    from vqct.downstream.table import downstream_table

    return downstream_table(args.results)


def _cmd_downstream_generation(args: argparse.Namespace) -> dict:
    from vqct.downstream.generation_tasks import run_generation_task
    from vqct.stage2.sampling import SamplingConfig

    sampling = SamplingConfig(args.temperature, args.top_k, args.top_p, args.cfg_scale)
    return run_generation_task(args.task, args.target, args.eval, args.parser, args.real, args.out, sampling,
                               args.seed, args.scenes, args.limit, args.tracking_uri, args.inception_weights)


def _cmd_downstream_truth(args: argparse.Namespace) -> dict:
    from vqct.downstream.truth_codes import write_truth_codes

    return write_truth_codes(args.shards, args.out, args.grid)


def _cmd_downstream_judge(args: argparse.Namespace) -> dict:
    from vqct.downstream.judge import judge

    return judge(args.shards, args.parser, args.real, args.limit, args.mismatched, args.completion_of,
                 args.inception_weights)


def _cmd_generate(args: argparse.Namespace) -> dict:
    from vqct.stage2.generate import generate
    from vqct.stage2.sampling import SamplingConfig

    sampling = SamplingConfig(args.temperature, args.top_k, args.top_p, args.cfg_scale, not args.no_cache,
                              args.null_condition, args.caption_line)
    if args.target.startswith("models:/"):  # a registered generator: its directory, fetched once
        from vqct.tracking.registry import fetch_generator

        args.target = str(fetch_generator(args.target, args.tracking_uri))
    if (args.conditions is None) != (args.out_shards is None):
        raise UserError("--conditions CODES and --out-shards DIR go together (one sample per held-out condition)")
    if args.caption_line < 0 or (args.caption_line and args.conditions is None):
        raise UserError(f"--caption-line {args.caption_line}: a line number from 0, of each --conditions "
                        "sample's caption (give --conditions CODES --out-shards DIR)")
    if args.conditions is not None:
        if args.out or args.caption or args.segmentation or args.prefix_image:
            raise UserError("--conditions takes each sample's condition from the code shards: drop --out, "
                            "--caption, --segmentation and --prefix-image (--complete continues each one's codes)")
        from vqct.launch.sample_shards import sample_to_shards

        return sample_to_shards(args.target, args.conditions, args.out_shards, sampling, args.seed, args.complete)
    if not args.out:
        raise UserError("give --out GRID.png (or --conditions CODES --out-shards DIR)")
    return generate(args.target, args.out, args.n, args.caption, args.segmentation, args.prefix_image, sampling,
                    args.seed)


def _cmd_bench_generate(args: argparse.Namespace) -> dict:
    from vqct.bench.generate import bench_generate

    return bench_generate(args.recipe, args.overrides, args.codes, args.grid, args.adj_noun, args.steps, args.warmup,
                          args.samples)


def _cmd_train(args: argparse.Namespace) -> dict:
    from vqct.config import load_recipe
    from vqct.launch.ray_driver import train

    cfg = load_recipe(args.recipe, args.overrides)
    return train(cfg)


def _cmd_mark_killed(args: argparse.Namespace) -> dict:
    from pathlib import Path

    from vqct.records.run_record import is_run_dir, read_run
    from vqct.tracking.mlflow_run import mark_killed_if_running

    run_dir = Path(args.run_dir)
    if not is_run_dir(run_dir):
        raise UserError(f"{run_dir} is not a vqct run directory (no vqct_run.json); give "
                        "<trainer.storage_path>/<run name>")
    record = read_run(run_dir)
    before = mark_killed_if_running(record["tracking_uri"], record["mlflow_run_id"])
    return {"run_dir": str(run_dir), "mlflow_run_id": record["mlflow_run_id"], "status_before": before,
            "status": "KILLED" if before == "RUNNING" else before}


def _cmd_submit(args: argparse.Namespace) -> dict:
    from vqct.launch.submit import submit

    if args.timeout is not None and args.timeout <= 0:
        raise UserError("--timeout must be a positive number of seconds")
    return submit(args.recipe, args.overrides, args.address, args.wait, args.working_dir, args.timeout)


def _cmd_recipes(args: argparse.Namespace) -> dict:
    from vqct.tracking.catalog import list_recipes

    return list_recipes(args.tracking_uri, args.metric)


def _cmd_compare(args: argparse.Namespace) -> dict:
    from vqct.tracking.compare import compare_results, compare_runs

    if all(t.endswith(".json") for t in args.targets):
        return compare_results(args.targets)
    if any(t.endswith(".json") for t in args.targets):
        raise UserError("vqct compare: give either runs and recipes, or .json result files, not both")
    return compare_runs(args.targets, args.tracking_uri, args.metric, args.out)


def _cmd_priors_build(args: argparse.Namespace) -> dict:
    from vqct.config import load_recipe
    from vqct.data.shards import resolve_shards
    from vqct.text.priors import ensure_priors

    cfg = load_recipe(args.recipe, args.overrides)
    urls = resolve_shards(cfg.data.train_shards, "data.train_shards")
    path, manifest, built = ensure_priors(cfg, urls, force=args.force)
    return {"priors_dir": str(path), "built": built, "text_model": manifest["text_model"],
            "embedding_dim": manifest["embedding_dim"], "edges": manifest["edges"], **manifest["report"]}


def resolve_target(args: argparse.Namespace):
    """What args.target stands for: every command that takes a trained tokenizer resolves it
    here (vqct.tracking.targets), so that all accept the same forms."""
    from vqct.tracking.targets import resolve_tokenizer

    return resolve_tokenizer(args.target, args.tracking_uri)


def _tokenizer_dir(args: argparse.Namespace, heads: bool):
    return resolve_target(args).path(heads)


def _cmd_tokenize(args: argparse.Namespace) -> dict:
    from vqct.tokenizer.export import export_tokens

    if args.batch_size <= 0:
        raise UserError("--batch-size must be a positive number")
    return export_tokens(_tokenizer_dir(args, heads=False), args.data, args.out, args.batch_size)


def _cmd_export(args: argparse.Namespace) -> dict:
    from vqct.tokenizer.pretrained import export

    return export(_tokenizer_dir(args, heads=False), args.out)


def _cmd_caption(args: argparse.Namespace) -> dict:
    from vqct.tokenizer.caption import caption_images

    return caption_images(_tokenizer_dir(args, heads=True), args.images, args.max_length)


def _cmd_eval(args: argparse.Namespace) -> dict:
    from vqct.eval.evaluate import evaluate

    if args.batch_size <= 0 or (args.max_samples is not None and args.max_samples <= 0):
        raise UserError("--batch-size and --max-samples must be positive numbers")
    return evaluate(resolve_target(args), args.data, args.batch_size, args.max_samples, args.inception_weights,
                    args.tracking_uri, args.best_metric, not args.no_promote, args.parser)


def _cmd_parser(args: argparse.Namespace) -> dict:
    from vqct.data.shards import resolve_shards

    if min(args.steps, args.batch_size, args.limit, args.width) <= 0:
        raise UserError("--steps, --batch-size, --limit and --width must be positive numbers")
    train, val = resolve_shards(args.data, "--data"), resolve_shards(args.val, "--val")
    from vqct.eval.parser_train import train_parser

    return train_parser(train, val, args.out, args.image_size, args.steps, args.batch_size, args.lr, args.width,
                        args.limit, args.seed)


def _cmd_bench_step(args: argparse.Namespace) -> dict:
    from vqct.bench.train_step import bench_step

    given = args.precisions or ("fp32" if args.baseline in ("plain", "variants", "ddp") else "fp32,bf16")
    precisions = [p.strip() for p in given.split(",") if p.strip()]
    if not precisions or any(p not in ("fp32", "bf16") for p in precisions):
        raise UserError("--precisions takes a comma-separated list of fp32 and bf16")
    if args.steps <= 0 or args.warmup < 0:
        raise UserError("--steps must be positive and --warmup not negative")
    try:
        stages = [int(x) for x in args.stages.split(",")]
    except ValueError:
        stages = []
    if not stages or any(s not in (0, 1, 2, 3) for s in stages):
        raise UserError(f"--stages {args.stages}: give ZeRO stages from 0-3, comma-separated, e.g. 0,1,2,3")
    if args.workers < 1:
        raise UserError("--workers must be a positive number")
    return bench_step(args.recipe, args.overrides, precisions, args.steps, args.warmup, args.priors, args.baseline,
                      args.vary, args.workers, stages)


def _cmd_bench_eval(args: argparse.Namespace) -> dict:
    from vqct.bench.eval_pass import bench_eval

    if min(args.batch_size, args.samples, args.rounds) <= 0:
        raise UserError("--batch-size, --samples and --rounds must be positive numbers")
    return bench_eval(_tokenizer_dir(args, heads=True), args.data, args.batch_size, args.samples, args.rounds)


def _cmd_bench_data(args: argparse.Namespace) -> dict:
    from vqct.bench.data import bench_data

    try:
        workers = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        workers = []
    if not workers or min(workers) < 0:
        raise UserError(f"--workers {args.workers}: give loader worker counts, e.g. 0,1,2")
    if min(args.images, args.per_shard, args.image_size, args.batch_size) <= 0 or args.step_ms <= 0:
        raise UserError("--images, --per-shard, --image-size, --batch-size and --step-ms must be positive")
    return bench_data(args.out, args.images, args.per_shard, args.image_size, args.batch_size, args.step_ms,
                      workers, args.device_decode)


def _cmd_bench_lookup(args: argparse.Namespace) -> dict:
    from vqct.bench.lookup import bench_lookup, parse_shapes

    try:
        shapes = parse_shapes(args.shapes) if args.shapes else None
    except ValueError as bad:
        raise UserError(f"--shapes: '{bad}' is not N,K,D with three positive integers "
                        "(e.g. --shapes '4096,1024,32;1024,262144,8')") from None
    if args.reps <= 0 or args.memory_mb <= 0:
        raise UserError("--reps and --memory-mb must be positive")
    return bench_lookup(shapes, args.full, args.dtype, args.memory_mb, args.cpu_dense_cap_gib, args.reps)


def _cmd_bench_suite(args: argparse.Namespace) -> dict:
    from vqct.bench.suite import run_suite

    if args.deadline_s <= 0:
        raise UserError("--deadline-s must be positive")
    result = run_suite(args.out, args.quick, args.only, args.deadline_s)
    if result["failed"]:  # the line still comes first: it names the steps to rerun
        print(json.dumps(result), flush=True)
        raise SystemExit(1)
    return result


def _cmd_bench_gcn(args: argparse.Namespace) -> dict:
    from vqct.bench.gcn import bench_gcn

    if args.reps <= 0:
        raise UserError("--reps must be positive")
    graphs = None
    if args.graphs:
        try:
            graphs = [(f"{n}x{e}", int(n), int(e)) for n, e in (g.split(",") for g in args.graphs.split(";") if g)]
            if any(n <= 0 or e <= 0 for _, n, e in graphs):
                raise ValueError
        except ValueError:
            raise UserError(f"--graphs: '{args.graphs}' is not NODES,EDGES;... with positive integers") from None
    return bench_gcn(args.full, args.reps, graphs)


# The rule of vqct.config.schema.tracking_uri, said once for every command's help.
TRACKING_URI_HELP = "the MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)"


def _add_judge_inputs(parser: argparse.ArgumentParser, real_required: bool, parser_optional: bool = False) -> None:
    """What the scene judge reads, shared by vqct downstream judge and the generation tasks (where
    --parser may be left out on real data: t2i and unconditional then score Inception FID only)."""
    parser.add_argument("--parser", required=not parser_optional,
                        help="the scene parser file (vqct parser)" + (
                            "; leave out on real data (COCO, CUB): t2i and unconditional are then scored by "
                            "Inception FID against --real alone" if parser_optional else ""))
    parser.add_argument("--real", nargs="+", required=real_required,
                        help="held-out real scenes for FID in the parser's feature space (fid_parser)" + (
                            "; without --parser, the real pictures of Inception FID" if parser_optional else ""))
    parser.add_argument("--limit", type=int, help="judge only the first N scenes (and N real ones)")
    parser.add_argument("--inception-weights", help="torch-fidelity's Inception-v3 weights, for Inception FID "
                        "against --real (default: $VQCT_INCEPTION_WEIGHTS or the torch hub cache; none: skipped, "
                        "or refused before sampling where it is the only score)")


def _add_sampling(parser: argparse.ArgumentParser) -> None:
    """The sampler's options, shared by vqct generate and the downstream generation tasks."""
    parser.add_argument("--temperature", type=float, default=1.0, help="0: the most likely code")
    parser.add_argument("--top-k", type=int, default=0, help="0: off")
    parser.add_argument("--top-p", type=float, default=1.0, help="1.0: off")
    parser.add_argument("--cfg-scale", type=float, help="classifier-free guidance scale (default: off; "
                        "unconditional samples never use it)")
    parser.add_argument("--seed", type=int, default=0)


def _add_target(parser: argparse.ArgumentParser) -> None:
    """The trained-tokenizer argument, the same forms for every command (vqct.tracking.targets)."""
    parser.add_argument("target", help="a trained tokenizer: a checkpoint directory, a run directory, a run "
                        "name, an MLflow run id, models:/NAME/VERSION, models:/NAME@ALIAS, or an exported "
                        "tokenizer directory")
    parser.add_argument("--tracking-uri", help=TRACKING_URI_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vqct", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a recipe (Ray Train + DeepSpeed, MLflow tracking)")
    train.add_argument("recipe", help="recipe name in recipes/ or path to a recipe YAML")
    train.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. trainer.max_steps=100")
    train.set_defaults(func=_cmd_train)

    submit = sub.add_parser("submit", help="submit `vqct train` to a Ray cluster as a Ray job")
    submit.add_argument("recipe")
    submit.add_argument("overrides", nargs="*")
    submit.add_argument("--address", help="Ray dashboard URL (default: $RAY_ADDRESS if a URL, "
                        "else http://127.0.0.1:8265)")
    submit.add_argument("--wait", action="store_true", help="stream the job's log; exit 0 only if it succeeded")
    submit.add_argument("--working-dir", default=".", help="uploaded as the job's working directory")
    submit.add_argument("--timeout", type=float, help="with --wait: give up following after this many seconds")
    submit.set_defaults(func=_cmd_submit)

    mark = sub.add_parser("mark-killed", help="mark a run's MLflow run KILLED if it is still RUNNING (its driver "
                          "died without closing it); a job script's teardown calls it")
    mark.add_argument("run_dir", help="the run's directory, <trainer.storage_path>/<run name>")
    mark.set_defaults(func=_cmd_mark_killed)

    recipes = sub.add_parser("recipes", help="the recipes, their sizes, and their runs in the tracking store")
    recipes.add_argument("--tracking-uri", help=TRACKING_URI_HELP)
    recipes.add_argument("--metric", default="val/psnr", help="what `best` means (lower is better for L1/FID/MSE)")
    recipes.set_defaults(func=_cmd_recipes)

    compare = sub.add_parser("compare", help="table and curves of runs (a recipe name: its best run), "
                             "or a table of final JSON lines of vqct train (X.json, with X.eval.json beside)")
    compare.add_argument("targets", nargs="+", metavar="RUN_OR_RECIPE_OR_JSON")
    compare.add_argument("--tracking-uri", help=TRACKING_URI_HELP)
    compare.add_argument("--metric", default="val/psnr", help="picks a recipe's best run")
    compare.add_argument("--out", help="PNG path (default: runs/compare-<time>.png)")
    compare.set_defaults(func=_cmd_compare)

    data = sub.add_parser("data", help="make datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    shapes = data_sub.add_parser("shapes", help="write synthetic image-caption shards")
    shapes.add_argument("--out", required=True, help="output directory (train/ and val/ inside)")
    shapes.add_argument("--num-samples", type=int, default=4096)
    shapes.add_argument("--samples-per-shard", type=int, default=256)
    shapes.add_argument("--image-size", type=int, default=32)
    shapes.add_argument("--seed", type=int, default=0)
    shapes.add_argument("--val-fraction", type=float, default=0.1, help="held-out share")
    shapes.set_defaults(func=_cmd_data_shapes)
    scenes = data_sub.add_parser("scenes", help="write the scenes world (objects, captions, segmentation, scene "
                                 "graphs, questions) as shards: train, val, test, test_compositional")
    scenes.add_argument("--out", required=True, help="output directory (one folder per split inside)")
    scenes.add_argument("--num-samples", type=int, default=10000, help="training scenes")
    scenes.add_argument("--val", type=int, default=500, help="validation scenes")
    scenes.add_argument("--test", type=int, default=500, help="test scenes")
    scenes.add_argument("--test-compositional", type=int, default=500,
                        help="test scenes that each show a (colour, shape) pair no other split shows")
    scenes.add_argument("--image-size", type=int, default=64, help="64, 128 or 256")
    scenes.add_argument("--samples-per-shard", type=int, default=1000)
    scenes.add_argument("--seed", type=int, default=0)
    scenes.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="writer processes")
    scenes.set_defaults(func=_cmd_data_scenes)

    pack = data_sub.add_parser("pack", help="pack images and captions into shards (img2dataset layout)",
                               description="Layouts: folder (images with same-named .txt captions), coco "
                               "(--annotations captions_*.json --images DIR), cub (CUB-200 / Oxford-102: "
                               "--images TREE --text TREE, official split files when present), table "
                               "(--table CSV/TSV/Parquet --image-column --caption-column).")
    pack.add_argument("layout", choices=["folder", "coco", "cub", "table"])
    pack.add_argument("--out", required=True, help="output directory (train/ and val/ inside)")
    pack.add_argument("--images", help="image folder (folder, coco, cub; table: root of relative paths)")
    pack.add_argument("--annotations", help="coco: the captions JSON")
    pack.add_argument("--text", help="cub: the caption tree, parallel to --images")
    pack.add_argument("--split-dir", help="cub: where the official split files are (default: looked for "
                      "beside the trees)")
    pack.add_argument("--table", help="table: the CSV, TSV or Parquet file")
    pack.add_argument("--image-column", default="image", help="table: column of image paths")
    pack.add_argument("--caption-column", default="caption", help="table: column of captions")
    pack.add_argument("--split", default="auto", help="auto (the dataset's own split when it has one, else "
                      "by seed), seed, train or val (everything into one split)")
    pack.add_argument("--val-fraction", type=float, default=0.05)
    pack.add_argument("--seed", type=int, default=0)
    pack.add_argument("--samples-per-shard", type=int, default=1000)
    pack.add_argument("--shard-bytes", type=int, default=0, help="also close a shard before its source files "
                      "pass this many bytes (0: by samples only)")
    pack.add_argument("--resize", type=int, default=0, help="shorter side to this many pixels (0: as found)")
    pack.add_argument("--center-crop", action="store_true", help="with --resize: a square centre crop")
    pack.add_argument("--format", default="jpg", choices=["jpg", "png", "webp", "keep"],
                      help="keep: the source bytes when they are JPEG, PNG or WebP and not resized")
    pack.add_argument("--quality", type=int, default=95)
    pack.add_argument("--workers", type=int, default=max(1, min(8, os.cpu_count() or 1)))
    pack.add_argument("--force", action="store_true", help="repack a split packed with other inputs or settings")
    pack.set_defaults(func=_cmd_data_pack)
    inspect = data_sub.add_parser("inspect", help="shards, samples, formats, sizes and faults of a shard set")
    inspect.add_argument("shards", nargs="+", help="directories, patterns or URLs")
    inspect.add_argument("--max-samples", type=int, help="stop after this many samples")
    inspect.set_defaults(func=_cmd_data_inspect)
    codes = data_sub.add_parser("tokenize", help="code shards for stage 2: each sample's codes under a trained "
                                "tokenizer, its captions and ground truth (one Ray task per shard, resumable)")
    _add_target(codes)
    codes.add_argument("shards", nargs="+", help="image shards: directories, patterns or URLs")
    codes.add_argument("--out", required=True, help="directory for codes-NNNNNN.tar and manifest.json, or "
                       "s3://BUCKET/PREFIX (each task uploads its shard; no disk in common needed)")
    codes.add_argument("--batch-size", type=int, default=64)
    codes.set_defaults(func=_cmd_data_tokenize)

    downstream = sub.add_parser("downstream", help="downstream models over a tokenizer's frozen codes (VQA, "
                                "captioning), and their table")
    downstream_sub = downstream.add_subparsers(dest="task", required=True)
    for task, what in [("vqa", "VQA: accuracy overall and per question type"),
                       ("caption", "captioning: BLEU-4, ROUGE-L, CIDEr-D (METEOR where Java runs)")]:
        one = downstream_sub.add_parser(task, help=f"{what}; trained on one code set, scored on held-out "
                                        "ones, logged to MLflow under the tokenizer's run")
        one.add_argument("train", help="training code set (vqct data tokenize --out DIR)")
        one.add_argument("--eval", action="append", default=[], required=True,
                         help="a held-out code set of the same tokenizer (repeat for several)")
        one.add_argument("settings", nargs="*", help="key=value, e.g. steps=500 seed=1 features=indices")
        one.add_argument("--tracking-uri", help=TRACKING_URI_HELP)
        one.set_defaults(func=_cmd_downstream)
    judge = downstream_sub.add_parser("judge", help="the scene judge: objects found (shape and colour), mIoU, "
                                      "FID in the parser's feature space, on generated or real scenes")
    judge.add_argument("shards", nargs="+", help="scenes shards or vqct generate --out-shards output")
    _add_judge_inputs(judge, real_required=False)
    judge.add_argument("--mismatched", action="store_true", help="the control: judge each picture against "
                       "the next scene's caption and map")
    judge.add_argument("--completion-of", nargs="+", metavar="SCENES", help="image completion: PSNR of each "
                       "picture's bottom (generated) and top (given) half against the real scene of the same key")
    judge.set_defaults(func=_cmd_downstream_judge)
    for task, what in [("t2i", "text-to-image: objects found by shape and colour against each caption"),
                       ("relations", "text-to-image from each relation line: relations held between the objects"),
                       ("semantic", "semantic image synthesis: mIoU against each class map"),
                       ("completion", "image completion from the top half: PSNR of the generated half"),
                       ("unconditional", "unconditional samples (the null condition)")]:
        one = downstream_sub.add_parser(task, help=f"{what}, and fid_parser; one sample per held-out condition "
                                        "from a generator, judged by the scene parser (t2i and unconditional on "
                                        "real data: Inception FID alone, without --parser)")
        one.add_argument("target", help="a trained generator (run directory, run name, checkpoint or directory)")
        one.add_argument("--eval", required=True, help="held-out code set of the generator's tokenizer")
        _add_judge_inputs(one, real_required=True, parser_optional=True)
        one.add_argument("--out", required=True, help="directory for the sample shards (resumable)")
        one.add_argument("--scenes", nargs="+", help="completion: the real scenes the --eval codes were made from")
        _add_sampling(one)
        one.add_argument("--tracking-uri", help=TRACKING_URI_HELP)
        one.set_defaults(func=_cmd_downstream_generation)
    truth = downstream_sub.add_parser("truth", help="the ceiling row: a code set of the scenes' ground truth "
                                      "(shape, colour, pattern, size per grid cell), read with features=indices")
    truth.add_argument("shards", nargs="+", help="scenes shards (vqct data scenes)")
    truth.add_argument("--out", required=True, help="directory for the code set")
    truth.add_argument("--grid", type=int, default=16, help="cells per side (the scenes tokenizers' 16)")
    truth.set_defaults(func=_cmd_downstream_truth)
    table = downstream_sub.add_parser("table", help="mean and spread per tokenizer over seeds, from the JSON "
                                      "lines vqct downstream printed")
    table.add_argument("results", nargs="+", help="files holding a vqct downstream command's output")
    table.set_defaults(func=_cmd_downstream_table)

    priors = sub.add_parser("priors", help="text priors for the vqct quantizer")
    priors_sub = priors.add_subparsers(dest="priors_command", required=True)
    build = priors_sub.add_parser("build", help="build (or reuse) the priors cache of a recipe")
    build.add_argument("recipe")
    build.add_argument("overrides", nargs="*")
    build.add_argument("--force", action="store_true", help="rebuild even when a valid cache exists")
    build.set_defaults(func=_cmd_priors_build)

    tokenize = sub.add_parser("tokenize", help="export each image's code indices from a trained checkpoint")
    _add_target(tokenize)
    tokenize.add_argument("--data", required=True, help="shards (directory, pattern or URLs)")
    tokenize.add_argument("--out", required=True, help="output directory for tokens-NNNNNN.safetensors")
    tokenize.add_argument("--batch-size", type=int, default=64)
    tokenize.set_defaults(func=_cmd_tokenize)

    generate = sub.add_parser("generate", help="a grid of samples from a trained generator (stage 2), decoded by "
                              "the tokenizer its code shards carry")
    generate.add_argument("target", help="a trained generator: a run directory (runs/<run>), a run name, a "
                          "checkpoint, models:/<recipe>/<version> or @<alias>, or a generator directory")
    generate.add_argument("--tracking-uri", help=TRACKING_URI_HELP)
    generate.add_argument("--out", help="PNG file for the grid")
    generate.add_argument("-n", type=int, default=16, help="samples")
    generate.add_argument("--caption", help="the caption (caption-conditioned generators)")
    generate.add_argument("--segmentation", help="a class-per-pixel PNG (segmentation-conditioned generators)")
    generate.add_argument("--prefix-image", help="an image whose top half of codes is kept (completion)")
    _add_sampling(generate)
    generate.add_argument("--no-cache", action="store_true", help="recompute the prefix every step (slower)")
    generate.add_argument("--null-condition", action="store_true", help="unconditional samples from a "
                          "conditional generator: its trained null condition in place of every caption or map")
    generate.add_argument("--conditions", help="held-out code shards (vqct data tokenize): one sample per sample, "
                          "spread over Ray tasks, written as image shards to --out-shards")
    generate.add_argument("--out-shards", help="directory for samples-NNNNNN.tar and manifest.json (resumable)")
    generate.add_argument("--complete", action="store_true",
                          help="with --conditions: keep each sample's top half of codes and generate the rest")
    generate.add_argument("--caption-line", type=int, default=0, help="with --conditions: the line of each "
                          "sample's caption a caption-conditioned generator is given (the scenes' relation line: 2)")
    generate.set_defaults(func=_cmd_generate)

    export = sub.add_parser("export", help="a tokenizer directory (config.json + model.safetensors) that "
                            "vqct.tokenizer.pretrained.from_pretrained loads without DeepSpeed or Ray")
    _add_target(export)
    export.add_argument("--out", required=True, help="the directory to write")
    export.set_defaults(func=_cmd_export)

    caption = sub.add_parser("caption", help="greedy captions from a VQCT-VLT checkpoint's codes")
    _add_target(caption)
    caption.add_argument("images", nargs="+")
    caption.add_argument("--max-length", type=int, default=30)
    caption.set_defaults(func=_cmd_caption)

    evaluate = sub.add_parser("eval", help="reconstruction, codebook usage and text alignment of a checkpoint")
    _add_target(evaluate)
    evaluate.add_argument("--data", required=True, help="held-out shards (directory, pattern or URLs)")
    evaluate.add_argument("--batch-size", type=int, default=64)
    evaluate.add_argument("--max-samples", type=int, help="stop after this many samples (default: all)")
    evaluate.add_argument("--inception-weights", help="torch-fidelity's Inception-v3 weights, for rFID "
                          "(default: $VQCT_INCEPTION_WEIGHTS or the torch hub cache)")
    evaluate.add_argument("--best-metric", default="psnr", help="the result that moves the recipe's `best` "
                          "alias in the model registry (lower is better for l1, rfid and the MSEs)")
    evaluate.add_argument("--no-promote", action="store_true", help="leave the `best` alias where it is "
                          "(the result still says whether this run would take it)")
    evaluate.add_argument("--parser", help="a scene parser from vqct parser: on scenes shards, whether each "
                          "reconstructed object keeps its shape class")
    evaluate.set_defaults(func=_cmd_eval)

    parser_cmd = sub.add_parser("parser", help="train the scene parser (shape class per pixel) on scenes shards "
                                "and measure it on held-out ones; vqct eval --parser uses it as a judge")
    parser_cmd.add_argument("--data", required=True, help="scenes training shards (vqct data scenes)")
    parser_cmd.add_argument("--val", required=True, help="held-out scenes shards, for the parser's own accuracy")
    parser_cmd.add_argument("--out", required=True, help="the file to write (weights and the accuracy figures)")
    parser_cmd.add_argument("--image-size", type=int, default=64)
    parser_cmd.add_argument("--steps", type=int, default=2000)
    parser_cmd.add_argument("--batch-size", type=int, default=32)
    parser_cmd.add_argument("--lr", type=float, default=2e-3)
    parser_cmd.add_argument("--width", type=int, default=16, help="channels of the first level (x2, x4, x4 below)")
    parser_cmd.add_argument("--limit", type=int, default=8000, help="training scenes held in memory")
    parser_cmd.add_argument("--seed", type=int, default=0)
    parser_cmd.set_defaults(func=_cmd_parser)

    bench = sub.add_parser("bench", help="benchmarks (ratios against a baseline measured in the same run)")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    step = bench_sub.add_parser("step", help="training-step throughput per precision (one process), or on N "
                            "processes against DDP")
    step.add_argument("recipe", nargs="?", default="vqgan_shapes")
    step.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=paper data.image_size=256")
    step.add_argument("--precisions", help="comma-separated, the first one is the baseline (default fp32,bf16; "
                      "fp32 with --baseline plain)")
    step.add_argument("--baseline", choices=["precision", "plain", "variants", "ddp"], default="precision",
                      help="plain: vqct's step against a plain taming-form PyTorch loop of the same modules, "
                      "interleaved in this run; variants: the recipe against each --vary; ddp: with --workers N, "
                      "vqct's step at each ZeRO stage against PyTorch DistributedDataParallel on N processes")
    step.add_argument("--workers", type=int, default=1, help="data-parallel processes (with --baseline ddp)")
    step.add_argument("--stages", default="0,1,2,3", help="with --baseline ddp: the ZeRO stages to measure")
    step.add_argument("--vary", action="append", default=[], metavar="KEY=VALUE",
                      help="with --baseline variants: one more override to measure against the recipe as given "
                      "(repeatable), e.g. --vary trainer.channels_last=true --vary optim.adam=foreach")
    step.add_argument("--steps", type=int, default=20)
    step.add_argument("--warmup", type=int, default=3)
    step.add_argument("--priors", help="priors cache directory, for vqct recipes")
    step.set_defaults(func=_cmd_bench_step)
    bench_gen = bench_sub.add_parser("generate", help="the stage-2 training step against a plain PyTorch loop, and "
                                     "sampling with the key-value cache against recomputing")
    bench_gen.add_argument("recipe", nargs="?", default="generator_shapes")
    bench_gen.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. generator.n_layer=8")
    bench_gen.add_argument("--codes", type=int, default=256, help="codebook size of a one-index tokenizer")
    bench_gen.add_argument("--grid", type=int, default=8, help="side of the code grid (8: 32 px at f4)")
    bench_gen.add_argument("--adj-noun", help="ADJECTIVES,NOUNS,TOPK: a VQCT layout instead of --codes")
    bench_gen.add_argument("--steps", type=int, default=20)
    bench_gen.add_argument("--warmup", type=int, default=3)
    bench_gen.add_argument("--samples", type=int, default=8, help="sequences sampled at once")
    bench_gen.set_defaults(func=_cmd_bench_generate)
    bench_eval = bench_sub.add_parser("eval", help="vqct eval's per-image pass against the same work done plainly "
                                      "and against the model's forward alone")
    _add_target(bench_eval)
    bench_eval.add_argument("--data", required=True, help="held-out shards (directory, pattern or URLs)")
    bench_eval.add_argument("--batch-size", type=int, default=64, help="vqct eval's default")
    bench_eval.add_argument("--samples", type=int, default=256,
                            help="images per pass, rounded up to whole batches (decoded once, in memory)")
    bench_eval.add_argument("--rounds", type=int, default=5, help="passes of each, alternating; the median counts")
    bench_eval.set_defaults(func=_cmd_bench_eval)
    bench_data = bench_sub.add_parser("data", help="loader images/s from raw (LAION-like sizes) and pre-resized "
                                      "JPEG shards, per worker, against the step's demand")
    bench_data.add_argument("--out", required=True, help="directory for the generated shards (raw/ and resized/)")
    bench_data.add_argument("--images", type=int, default=512)
    bench_data.add_argument("--per-shard", type=int, default=64)
    bench_data.add_argument("--image-size", type=int, default=256, help="the training size")
    bench_data.add_argument("--batch-size", type=int, default=8, help="the step's batch per rank")
    bench_data.add_argument("--step-ms", type=float, default=145.0, help="the step's time (demand = batch / step)")
    bench_data.add_argument("--workers", default="1,2", help="loader worker processes to measure, comma-separated")
    bench_data.add_argument("--device-decode", action="store_true", help="also nvJPEG on the GPU (torchvision)")
    bench_data.set_defaults(func=_cmd_bench_data)
    bench_lookup = bench_sub.add_parser("lookup", help="nearest-code lookup vs cdist, expanded and chunked forms")
    bench_lookup.add_argument("--shapes", help="'N,K,D;N,K,D' (default: the full set on a GPU, scaled on a CPU)")
    bench_lookup.add_argument("--full", action="store_true", help="the full shapes (N=65,536) on a CPU too")
    bench_lookup.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    bench_lookup.add_argument("--memory-mb", type=float, default=256.0, help="the chunked path's budget")
    bench_lookup.add_argument("--cpu-dense-cap-gib", type=float, default=4.0,
                              help="skip the unchunked baselines on a CPU where they would need more")
    bench_lookup.add_argument("--reps", type=int, default=3)
    bench_lookup.set_defaults(func=_cmd_bench_lookup)
    bench_suite = bench_sub.add_parser("suite", help="the GPU machine's benchmarks in one command, one JSON line "
                                       "per step (make bench-gpu; docs/performance.md)")
    bench_suite.add_argument("--out", default="runs/bench-gpu.jsonl", help="JSON lines, appended")
    bench_suite.add_argument("--quick", action="store_true", help="the same steps at CPU sizes (checks the suite)")
    bench_suite.add_argument("--only", help="comma-separated step names, e.g. the failed ones to rerun")
    bench_suite.add_argument("--deadline-s", type=float, default=450.0,
                             help="steps not started by then are skipped (a lent machine's time is short)")
    bench_suite.set_defaults(func=_cmd_bench_suite)
    bench_gcn = bench_sub.add_parser("gcn", help="graph aggregation vs torch.sparse.mm and index_add_")
    bench_gcn.add_argument("--full", action="store_true", help="the 10M-edge graph on a CPU too")
    bench_gcn.add_argument("--graphs", help="'NODES,EDGES;...' random graphs instead of the default two")
    bench_gcn.add_argument("--reps", type=int, default=3)
    bench_gcn.set_defaults(func=_cmd_bench_gcn)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse takes the positionals of a command in one go, so `key=value` settings written
    # after an option (vqct downstream vqa TRAIN --eval DIR steps=500) arrive here
    if extra and hasattr(args, "settings") and not any(e.startswith("-") for e in extra):
        args.settings += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    interrupt_on_sigterm()
    try:
        result = args.func(args)
    except UserError as err:
        print(f"vqct: error: {err}", file=sys.stderr)
        return err.exit_code
    except TrainingFailed as err:
        print(f"vqct: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("vqct: interrupted", file=sys.stderr)
        return 130  # 128 + SIGINT, for SIGTERM too: the run stopped on request
    if result is not None:
        sys.stdout.flush()
        print(json.dumps(result, default=str), flush=True)
    # Nothing left to collect: without this the interpreter's shutdown walks every object that
    # torch, transformers and MLflow created (2.8 s after `vqct eval` on 2 CPU cores, 0.4 s with).
    gc.freeze()
    return 0


if __name__ == "__main__":
    sys.exit(main())
