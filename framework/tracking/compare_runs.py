"""`vqct compare RUN_OR_RECIPE...`: a table of the runs' final metrics and a PNG of their
loss, codebook-usage and PSNR curves, logged together as a comparison run in MLflow.
A recipe name stands for its best run by --metric."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

from vqct.errors import UserError

CURVES = [("loss/rec_l1", "reconstruction L1"), ("codebook/usage", "codebook usage"), ("val/psnr", "val PSNR (dB)")]
COLUMNS = [("codebook/usage", "usage"), ("val/psnr", "val PSNR"), ("val/ssim", "val SSIM"),
           ("eval/psnr", "eval PSNR"), ("eval/codebook_usage", "eval usage"), ("eval/retrieval_r1", "R@1"),
           ("eval/masked_word_r1", "masked-word R@1"), ("eval/code_word_mse", "code-word MSE")]
COMPARE_EXPERIMENT = "vqct-compare"


def _resolve(client, target: str, metric: str):
    from vqct.tracking.catalog import _best

    if re.fullmatch(r"[0-9a-f]{32}", target):
        try:
            return client.get_run(target)
        except Exception:
            raise UserError(f"{target}: no such run in the tracking store") from None
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, f"tags.recipe = '{target}'") if experiments else []
    best = _best(runs, metric)
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


def _table(runs) -> str:
    header = "| recipe | run | " + " | ".join(title for _, title in COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 2)]
    for run in runs:
        m = run.data.metrics
        cells = [f"{m[k]:.4g}" if k in m else "-" for k, _ in COLUMNS]
        lines.append(f"| {run.data.tags.get('recipe', '?')} | {run.info.run_name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare(targets: list[str], uri: str | None, metric: str, out: str | None) -> dict:
    from mlflow.tracking import MlflowClient

    from vqct.tracking.mlflow_run import _experiment_id, absolute_uri
    from vqct.tracking.registry import default_uri

    uri = absolute_uri(uri or default_uri())
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise UserError(f"no tracking store at {uri}: pass --tracking-uri or set MLFLOW_TRACKING_URI")
    client = MlflowClient(tracking_uri=uri)
    runs = [_resolve(client, t, metric) for t in targets]
    png = Path(out or f"runs/compare-{time.strftime('%Y%m%d-%H%M%S')}.png")
    png.parent.mkdir(parents=True, exist_ok=True)
    _plot(client, runs, png)
    table = _table(runs)
    print(table, file=sys.stderr)
    compare_run = client.create_run(_experiment_id(client, COMPARE_EXPERIMENT, uri),
                                    run_name=f"compare-{'-'.join(t[:12] for t in targets)}",
                                    tags={"vqct.compared_runs": ",".join(r.info.run_id for r in runs)})
    run_id = compare_run.info.run_id
    client.log_artifact(run_id, str(png), "compare")
    client.log_text(run_id, table, "compare/table.md")
    client.set_terminated(run_id)
    rows = [{"recipe": r.data.tags.get("recipe"), "run_id": r.info.run_id, "run_name": r.info.run_name,
             **{k: r.data.metrics.get(k) for k, _ in COLUMNS}} for r in runs]
    return {"runs": rows, "png": str(png), "comparison_run_id": run_id, "tracking_uri": uri}
