"""Resolve a recipe once, on the driver: Hydra compose -> typed schema -> checks -> dict.

Workers receive the plain dict and never call Hydra.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vqct.config.schema import Config
from vqct.errors import UserError

def _product(*values):
    """${mul:a,b,...} in recipes: the product of its arguments (e.g. the papers' lr rule)."""
    result = 1.0
    for value in values:
        result *= float(value)
    return result


OmegaConf.register_new_resolver("mul", _product, replace=True)

# Keys that steer a run without changing what is trained: left out of the config hash.
_RUN_CONTROL_KEYS = ("trainer.resume", "trainer.run_name", "trainer.max_steps")


def recipes_dir() -> Path:
    """The recipe registry: $VQCT_RECIPES_DIR, else the repository's recipes/, else ./recipes."""
    env = os.environ.get("VQCT_RECIPES_DIR")
    if env:
        return Path(env).resolve()
    repo = Path(__file__).resolve().parents[2] / "recipes"
    return repo if repo.is_dir() else Path.cwd() / "recipes"


def _locate(recipe: str) -> Path:
    path = Path(recipe)
    candidates = [path, recipes_dir() / recipe, recipes_dir() / f"{recipe}.yaml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    known = ", ".join(sorted(p.stem for p in recipes_dir().glob("*.yaml"))) or "none"
    raise UserError(
        f"recipe '{recipe}' not found: give a path to a YAML file or a recipe name "
        f"from {recipes_dir()} (known: {known})"
    )


def _one_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return "; ".join(lines)


def _schema_overrides(overrides: list[str]) -> list[str]:
    """Let `key=value` set any key the schema knows, even one the recipe leaves out.

    Plain overrides become Hydra's `++key=value` (add or replace); the typed schema then
    rejects unknown keys and wrong types. Config-group choices (`model=paper`) and
    explicit `+`/`~` overrides pass through unchanged.
    """
    groups = {p.name for p in recipes_dir().iterdir() if p.is_dir()} if recipes_dir().is_dir() else set()
    out = []
    for item in overrides:
        key = item.split("=", 1)[0]
        if "=" not in item or key.startswith(("+", "~")) or key in groups or key.startswith("hydra."):
            out.append(item)
        else:
            out.append(f"++{_quote_brace_range(item)}")
    return out


_BRACE_RANGE = re.compile(r"\{\d+\.\.\d+\}")


def _quote_brace_range(item: str) -> str:
    """Shard patterns such as /laion/{00000..09999}.tar are not Hydra syntax: quote the value
    (the shell already took the user's own quotes away)."""
    key, value = item.split("=", 1)
    if _BRACE_RANGE.search(value) and not value.startswith(("'", '"')) and "'" not in value:
        return f"{key}='{value}'"
    return item


def _compose(path: Path, overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    GlobalHydra.instance().clear()
    extra = []
    if path.parent != recipes_dir():
        # A recipe outside the registry may still use its config groups (model/...).
        extra = [f"hydra.searchpath=[file://{recipes_dir()}]"]
    try:
        with initialize_config_dir(config_dir=str(path.parent), version_base="1.3", job_name="vqct"):
            return compose(config_name=path.stem, overrides=extra + _schema_overrides(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        raise UserError(f"config error in recipe {path.name}: {_one_line(exc)}") from None
    finally:
        GlobalHydra.instance().clear()


def _validate(cfg: dict[str, Any]) -> None:
    """Semantic checks the type schema cannot express. Each names the key and the fix."""
    t, d, m, q = cfg["trainer"], cfg["data"], cfg["model"], cfg["quantizer"]
    positive = {
        "data.image_size": d["image_size"],
        "data.batch_size": d["batch_size"],
        "data.val_batches": d["val_batches"],
        "model.ch": m["ch"],
        "model.z_channels": m["z_channels"],
        "model.embed_dim": m["embed_dim"],
        "quantizer.codebook_size": q["codebook_size"],
        "quantizer.usage_window": q["usage_window"],
        "trainer.max_steps": t["max_steps"],
        "trainer.num_workers": t["num_workers"],
        "trainer.cpus_per_worker": t["cpus_per_worker"],
        "trainer.grad_accum": t["grad_accum"],
        "trainer.checkpoint_every": t["checkpoint_every"],
        "trainer.log_every": t["log_every"],
        "trainer.image_every": t["image_every"],
        "trainer.keep_checkpoints": t["keep_checkpoints"],
        "trainer.max_bad_steps": t["max_bad_steps"],
        "model.num_res_blocks": m["num_res_blocks"],
    }
    for key, value in positive.items():
        if value <= 0:
            raise UserError(f"config: {key}={value} must be a positive number")
    for key, value in {"data.num_workers": d["num_workers"], "data.shuffle_buffer": d["shuffle_buffer"],
                       "trainer.max_failures": t["max_failures"],
                       "loss.disc_start": cfg["loss"]["disc_start"], "optim.warmup_steps": cfg["optim"]["warmup_steps"]}.items():
        if value < 0:
            raise UserError(f"config: {key}={value} must be 0 or more")
    if t["zero_stage"] not in (0, 1, 2, 3):
        raise UserError(f"config: trainer.zero_stage={t['zero_stage']} must be 0, 1, 2 or 3")
    if t["precision"] not in ("fp32", "bf16"):
        raise UserError(f"config: trainer.precision='{t['precision']}' must be 'fp32' or 'bf16'")
    if not m["ch_mult"]:
        raise UserError("config: model.ch_mult must list at least one channel multiplier")
    factor = 2 ** (len(m["ch_mult"]) - 1)
    if d["image_size"] % factor:
        raise UserError(
            f"config: data.image_size={d['image_size']} is not divisible by the downsampling "
            f"factor {factor} of model.ch_mult={m['ch_mult']}"
        )
    if q["name"] not in ("vq", "vqct"):
        raise UserError(f"config: quantizer.name='{q['name']}' must be 'vq' or 'vqct'")
    if q["name"] == "vqct" and m["embed_dim"] != 2 * q["code_dim"]:
        raise UserError(
            f"config: model.embed_dim={m['embed_dim']} must be 2 x quantizer.code_dim={q['code_dim']} "
            "for the vqct quantizer (an adjective half and a noun half)"
        )
    if q["name"] == "vqct" and q["adj_topk"] < 1:
        raise UserError(f"config: quantizer.adj_topk={q['adj_topk']} must be at least 1")
    if not d["train_shards"]:
        raise UserError("config: data.train_shards is empty: set it to a shard directory, pattern or list")


def load_recipe(recipe: str, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Compose RECIPE with OVERRIDES, validate against the schema, return a plain dict."""
    path = _locate(recipe)
    composed = _compose(path, list(overrides))
    missing = sorted(OmegaConf.missing_keys(composed))
    if missing:  # `???` in a recipe: a value the user must give (merging would hide it)
        raise UserError(f"recipe {path.name} needs a value for {', '.join(missing)}: "
                        f"pass it as an override, e.g. {missing[0]}=...")
    try:
        typed = OmegaConf.merge(OmegaConf.structured(Config), composed)
        resolved = OmegaConf.to_container(typed, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as exc:
        raise UserError(f"config error in recipe {path.name}: {_one_line(exc)}") from None
    resolved["recipe"] = resolved["recipe"] or path.stem
    _validate(resolved)
    return resolved


def flatten(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay values (MLflow params are strings)."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def config_hash(cfg: dict[str, Any]) -> str:
    """A short hash of what is trained (run-control keys such as resume left out)."""
    flat = {k: v for k, v in flatten(cfg).items() if k not in _RUN_CONTROL_KEYS}
    blob = json.dumps(flat, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def to_yaml(cfg: dict[str, Any]) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(cfg))
