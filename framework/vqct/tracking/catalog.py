"""`vqct recipes`: the recipes in recipes/ (the registry's entries) with their key sizes and,
from the tracking store, each one's runs and its best run by a metric."""

from __future__ import annotations

import sys
from pathlib import Path

from vqct.config.compose import load_recipe, recipes_dir
from vqct.config.generator import GeneratorConfig
from vqct.config.schema import Config, VQConfig, VQCTConfig
from vqct.errors import UserError
from vqct.tracking.registry import LOWER_IS_BETTER


def codebook_size(cfg: Config) -> int | None:
    """The number of codes CFG trains: vq's codebook_size; vqct's vocabulary sizes when both
    are set (else the caption vocabulary decides, known once the priors are built)."""
    q, t = cfg.quantizer, cfg.text
    if isinstance(q, VQConfig):
        return q.codebook_size
    return t.adjectives + t.nouns if t.adjectives and t.nouns else None


def describe(cfg: Config | GeneratorConfig) -> dict:
    if isinstance(cfg, GeneratorConfig):  # its codes come from the tokenizer its code shards pin
        text = getattr(cfg.condition, "text_model", "-")
        return {"recipe": cfg.recipe, "family": cfg.family, "quantizer": "-", "text_model": text,
                "image_size": None, "codes": None, "code_groups": f"condition {cfg.condition.name}",
                "embed_dim": cfg.generator.n_embd, "model_ch": None}
    q, t = cfg.quantizer, cfg.text
    groups = "-" if isinstance(q, VQConfig) else f"{t.adjectives or 'all'}+{t.nouns or 'all'}"
    uses_text = isinstance(q, VQCTConfig) or cfg.align.enabled
    return {"recipe": cfg.recipe, "family": cfg.family, "quantizer": q.name,
            "text_model": t.model if uses_text else "-", "image_size": cfg.data.image_size,
            "codes": codebook_size(cfg), "code_groups": groups, "embed_dim": cfg.model.embed_dim,
            "model_ch": cfg.model.ch}


def _recipe_configs() -> list[Config]:
    configs = []
    for path in sorted(recipes_dir().glob("*.yaml")):
        try:
            cfg = load_recipe(str(path))
        except UserError as exc:  # recipes with `???` values (data paths to give) still list
            missing = str(exc)
            cfg = _with_placeholder_shards(path, missing)
            if cfg is None:
                print(f"warning: {path.name}: {missing}", file=sys.stderr)
                continue
        configs.append(cfg)
    return configs


def _with_placeholder_shards(path: Path, message: str) -> Config | None:
    if "needs a value for" not in message:
        return None
    keys = message.split("needs a value for ", 1)[1].split(":", 1)[0].split(", ")
    try:
        return load_recipe(str(path), [f"{k}=GIVEN_AT_LAUNCH" for k in keys])
    except UserError:
        return None


def _runs_by_recipe(uri: str) -> dict[str, list]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, max_results=5000) if experiments else []
    grouped: dict[str, list] = {}
    for run in runs:
        grouped.setdefault(run.data.tags.get("recipe", ""), []).append(run)
    return grouped


def best_run(runs: list, metric: str):
    """The run of RUNS with the best final METRIC (lower is better for errors), or None."""
    lower = metric.split("/")[-1] in LOWER_IS_BETTER
    scored = [r for r in runs if metric in r.data.metrics]
    if not scored:
        return None
    pick = min if lower else max
    return pick(scored, key=lambda r: r.data.metrics[metric])


def list_recipes(uri: str | None, metric: str) -> dict:
    from vqct.tracking.mlflow_run import absolute_uri
    from vqct.config.schema import tracking_uri

    uri = absolute_uri(tracking_uri(uri))
    store_exists = not uri.startswith("sqlite:///") or Path(uri[len("sqlite:///"):]).is_file()
    grouped = _runs_by_recipe(uri) if store_exists else {}
    rows = []
    for cfg in _recipe_configs():
        runs = grouped.get(cfg.recipe, [])
        best = best_run(runs, metric)
        rows.append({**describe(cfg), "runs": len(runs),
                     "best_run": best.info.run_id if best else None,
                     "best": best.data.metrics[metric] if best else None})
    print(_table(rows, metric), file=sys.stderr)
    return {"tracking_uri": uri, "metric": metric, "recipes": rows}


def _table(rows: list[dict], metric: str) -> str:
    columns = ["recipe", "family", "quantizer", "text_model", "image_size", "codes", "code_groups", "runs",
               "best_run", "best"]
    header = "| " + " | ".join(c if c != "best" else f"best {metric}" for c in columns) + " |"
    lines = [header, "|" + "---|" * len(columns)]
    for row in rows:
        cells = [("-" if row[c] is None else f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]))
                 for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
