"""`vqct compare`: runs side by side.

- `vqct compare RUN_OR_RECIPE...`: a table of the runs' final metrics in the tracking store
  and a PNG of their loss, codebook-usage and PSNR curves, logged together as a comparison
  run in MLflow. A recipe name stands for its best run by --metric.
- `vqct compare RESULT.json...` (`make compare`): a table of training runs from their final
  JSON lines and, beside each X.json, X.eval.json (the output of `vqct eval`).
"""

from __future__ import annotations

import json
import re
import statistics
import sys
import time
from pathlib import Path

from vqct.errors import UserError
from vqct.records.command_output import read_last_json

CURVES = [("loss/rec_l1", "reconstruction L1"), ("codebook/usage", "codebook usage"), ("val/psnr", "val PSNR (dB)")]
RUN_COLUMNS = [("codebook/usage", "usage"), ("val/psnr", "val PSNR"), ("val/ssim", "val SSIM"),
           ("eval/psnr", "eval PSNR"), ("eval/codebook_usage", "eval usage"), ("eval/retrieval_r1", "R@1"),
           ("eval/masked_word_r1", "masked-word R@1"), ("eval/code_word_mse", "code-word MSE")]
COMPARE_EXPERIMENT = "vqct-compare"


def _resolve(client, target: str, metric: str):
    from vqct.tracking.catalog import best_run

    if re.fullmatch(r"[0-9a-f]{32}", target):
        try:
            return client.get_run(target)
        except Exception:
            raise UserError(f"{target}: no such run in the tracking store") from None
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, f"tags.recipe = '{target}'") if experiments else []
    best = best_run(runs, metric)
    if best is None:
        raise UserError(f"{target}: neither a run id nor a recipe with a finished run that logged {metric}")
    return best


def _plot(client, runs, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVES), figsize=(5 * len(CURVES), 3.6))
    for ax, (key, title) in zip(axes, CURVES):
        for run in runs:
            history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            if history:
                ax.plot(*zip(*history), label=f"{run.data.tags.get('recipe', '?')} ({run.info.run_id[:6]})")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _runs_table(runs) -> str:
    header = "| recipe | run | " + " | ".join(title for _, title in RUN_COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(RUN_COLUMNS) + 2)]
    for run in runs:
        m = run.data.metrics
        cells = [f"{m[k]:.4g}" if k in m else "-" for k, _ in RUN_COLUMNS]
        lines.append(f"| {run.data.tags.get('recipe', '?')} | {run.info.run_name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare_runs(targets: list[str], uri: str | None, metric: str, out: str | None) -> dict:
    from mlflow.tracking import MlflowClient

    from vqct.tracking.mlflow_run import absolute_uri, experiment_id
    from vqct.config.schema import tracking_uri

    uri = absolute_uri(tracking_uri(uri))
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise UserError(f"no tracking store at {uri}: pass --tracking-uri or set MLFLOW_TRACKING_URI")
    client = MlflowClient(tracking_uri=uri)
    runs = [_resolve(client, t, metric) for t in targets]
    png = Path(out or f"runs/compare-{time.strftime('%Y%m%d-%H%M%S')}.png")
    png.parent.mkdir(parents=True, exist_ok=True)
    _plot(client, runs, png)
    table = _runs_table(runs)
    print(table, file=sys.stderr)
    compare_run = client.create_run(experiment_id(client, COMPARE_EXPERIMENT, uri),
                                    run_name=f"compare-{'-'.join(t[:12] for t in targets)}",
                                    tags={"vqct.compared_runs": ",".join(r.info.run_id for r in runs)})
    run_id = compare_run.info.run_id
    client.log_artifact(run_id, str(png), "compare")
    client.log_text(run_id, table, "compare/table.md")
    client.set_terminated(run_id)
    for compared in {r.info.run_id for r in runs}:  # each compared run shows the comparison too
        try:
            client.log_artifact(compared, str(png), f"compare/{run_id}")
        except Exception as exc:
            print(f"warning: could not log the comparison to run {compared}: {type(exc).__name__}", file=sys.stderr)
    rows = [{"recipe": r.data.tags.get("recipe"), "run_id": r.info.run_id, "run_name": r.info.run_name,
             **{k: r.data.metrics.get(k) for k, _ in RUN_COLUMNS}} for r in runs]
    return {"runs": rows, "png": str(png), "comparison_run_id": run_id, "tracking_uri": uri}


# ---- final JSON lines of training runs (make compare) -------------------------------------
RESULT_COLUMNS = [
    ("recipe", "recipe", "{}"),
    ("steps", "steps", "{:.0f}"),
    ("codebook_usage", "usage (train)", "{:.1%}"),
    ("eval_codebook_usage", "usage (held-out)", "{:.1%}"),
    ("psnr", "val PSNR (dB)", "{:.2f}"),
    ("eval_psnr", "held-out PSNR (dB)", "{:.2f}"),
    ("eval_ssim", "held-out SSIM", "{:.3f}"),
    ("eval_object_psnr", "object PSNR (dB)", "{:.2f}"),
    ("eval_colour_kept", "colour kept", "{:.1%}"),
    ("eval_shape_kept", "shape kept", "{:.1%}"),
    ("eval_retrieval_r1", "retrieval R@1", "{:.3f}"),
    ("eval_retrieval_r5", "retrieval R@5", "{:.3f}"),
    ("eval_masked_word_r1", "masked-word R@1", "{:.3f}"),
    ("eval_masked_word_r1_shuffled_images", "masked-word R@1, shuffled images", "{:.3f}"),
    ("eval_code_word_mse", "code-word MSE", "{:.3f}"),
    ("images_per_s", "images/s", "{:.1f}"),
]


def load_result(path: str) -> dict:
    result = read_last_json(path)
    evaluated = Path(path).with_suffix(".eval.json")
    if evaluated.is_file():
        result.update({f"eval_{k}": v for k, v in read_last_json(evaluated).items()})
    return result


def summarise(results: list[dict]) -> list[dict]:
    """Per recipe, in first-seen order: the number of runs (seeds) and, for each numeric column,
    the mean and the sample standard deviation over them (None for a single run)."""
    groups: dict[str, list[dict]] = {}
    codes_per_recipe: dict[str, set] = {}
    for result in results:
        codes_per_recipe.setdefault(result.get("recipe") or "?", set()).add(result.get("codes"))
    for result in results:
        recipe = result.get("recipe") or "?"
        # One recipe run at several codebook sizes (make capacity): a row per size.
        label = f"{recipe} ({result.get('codes')} codes)" if len(codes_per_recipe[recipe]) > 1 else recipe
        groups.setdefault(label, []).append(result)
    summary = []
    for recipe, runs in groups.items():
        row = {"recipe": recipe, "runs": len(runs), "seeds": [r.get("seed") for r in runs]}
        for key, _, _ in RESULT_COLUMNS[1:]:
            values = [float(r[key]) for r in runs if isinstance(r.get(key), (int, float))]
            if values:
                row[key] = mean_sd(values)
        summary.append(row)
    return summary


def mean_sd(values: list[float]) -> dict:
    """{"mean", "sd"}: the sample standard deviation, None for one value."""
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else None}


def cell(stat: dict | None, fmt: str) -> str:
    """A table cell: "mean ± sd", the mean alone for one run, "-" for none."""
    if not stat:
        return "-"
    if stat["sd"] is None:
        return fmt.format(stat["mean"])
    return f"{fmt.format(stat['mean'])} ± {fmt.format(stat['sd'])}"


def results_table(results: list[dict]) -> str:
    """One row per recipe: mean ± standard deviation over its runs (seeds)."""
    columns = RESULT_COLUMNS[1:]
    header = "| recipe | seeds | " + " | ".join(title for _, title, _ in columns) + " |"
    rule = "|" + "|".join("---" for _ in range(len(columns) + 2)) + "|"
    rows = [f"| {row['recipe']} | {row['runs']} | " + " | ".join(cell(row.get(key), fmt) for key, _, fmt in columns)
            + " |" for row in summarise(results)]
    chance = next((r for r in results if r.get("eval_retrieval_r1_chance")), None)
    note = ""
    if chance:
        note = (f"\n\nChance: retrieval R@1 {chance['eval_retrieval_r1_chance']:.4f}, R@5 "
                f"{chance['eval_retrieval_r5_chance']:.4f} ({chance['eval_retrieval_candidates']} distinct captions).")
    return "\n".join([header, rule, *rows]) + note


def compare_results(paths: list[str]) -> dict:
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise UserError(f"{missing[0]}: no such file (give files holding vqct train's final JSON line, "
                        "e.g. runs/compare/X.json)")
    results = [load_result(p) for p in paths]
    print(results_table(results), file=sys.stderr)
    return {"compare": summarise(results), "runs": results}
