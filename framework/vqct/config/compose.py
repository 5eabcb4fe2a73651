"""Resolve a recipe once, on the driver: Hydra compose -> typed Config -> checks.

Workers receive the typed Config (inside train.spec.WorkerSpec) and never call Hydra.
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

from vqct.config.generator import GENERATOR_FAMILY, GeneratorConfig
from vqct.config.schema import Config, tracking_uri
from vqct.config.typed import config_from_dict, config_to_dict, generator_config_from_dict, one_line
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
    repo = Path(__file__).resolve().parents[3] / "recipes"
    return repo if repo.is_dir() else Path.cwd() / "recipes"


def locate_recipe(recipe: str) -> Path:
    """The recipe file a name (or path) stands for; a UserError listing the known ones if none."""
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
        raise UserError(f"config error in recipe {path.name}: {one_line(exc)}") from None
    finally:
        GlobalHydra.instance().clear()


def _missing_keys(node, prefix: str = "") -> list[str]:
    """Keys whose value is `???`, found without resolving interpolations (one may name a key
    that only the schema's defaults hold). Before the defaults are merged: a merge keeps the
    default where the recipe says `???`."""
    if not isinstance(node, dict):
        return []
    found = []
    for key, value in node.items():
        if value == "???":
            found.append(f"{prefix}{key}")
        found += _missing_keys(value, f"{prefix}{key}.")
    return sorted(found)


def _with_defaults(composed, root: type):
    """The recipe over the schema's defaults, untyped, so that an interpolation may name a key
    the recipe leaves out. The chosen sections' defaults (quantizer, condition) depend on their
    name: config/typed.py adds them."""
    defaults = config_to_dict(root())
    for chosen in ("quantizer", "condition"):
        defaults.pop(chosen, None)
    return OmegaConf.merge(OmegaConf.create(defaults), composed)


def is_generator_recipe(composed) -> bool:
    return composed.get("family") == GENERATOR_FAMILY


def load_recipe(recipe: str, overrides: Iterable[str] = ()) -> Config | GeneratorConfig:
    """Compose RECIPE with OVERRIDES into the typed, checked Config (a GeneratorConfig for the
    stage-2 recipes, `family: generator`)."""
    path = locate_recipe(recipe)
    composed = _compose(path, list(overrides))
    missing = _missing_keys(OmegaConf.to_container(composed, resolve=False))
    if missing:  # `???` in a recipe: a value the user must give (merging would hide it)
        raise UserError(f"recipe {path.name} needs a value for {', '.join(missing)}: "
                        f"pass it as an override, e.g. {missing[0]}=...")
    generator = is_generator_recipe(composed)
    try:
        raw = OmegaConf.to_container(_with_defaults(composed, GeneratorConfig if generator else Config),
                                     resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as exc:
        raise UserError(f"config error in recipe {path.name}: {one_line(exc)}") from None
    cfg = generator_config_from_dict(raw) if generator else config_from_dict(raw)
    cfg.recipe = cfg.recipe or path.stem
    cfg.tracking.uri = tracking_uri(cfg.tracking.uri)
    cfg.check()
    return cfg


def flatten(cfg: Config | GeneratorConfig | dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay values (MLflow params are strings)."""
    out: dict[str, Any] = {}
    items = cfg if isinstance(cfg, dict) else config_to_dict(cfg)
    for key, value in items.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def config_hash(cfg: Config | GeneratorConfig) -> str:
    """A short hash of what is trained (run-control keys such as resume left out)."""
    flat = {k: v for k, v in flatten(cfg).items() if k not in _RUN_CONTROL_KEYS}
    blob = json.dumps(flat, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def to_yaml(cfg: Config | GeneratorConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(config_to_dict(cfg)))
