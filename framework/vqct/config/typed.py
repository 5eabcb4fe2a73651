"""Plain mappings <-> the typed Config: for composed recipes (strict) and for the configs that
checkpoints and run records stored (lenient about keys older versions wrote).

OmegaConf merges each mapping into the schema's dataclasses, so an unknown key or a value
of the wrong type fails with the full key named. The quantizer section is merged into the
class its `name` chooses (schema.QUANTIZERS).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from vqct.config import generator as _generator_schema
from vqct.config.generator import CONDITIONS, GeneratorConfig
from vqct.config.schema import QUANTIZERS, Config, QuantizerConfig, section_types
from vqct.errors import UserError

# Keys renamed since they were first released: old key -> the key that replaced it.
RENAMED = {
    "align.lgvq.alpha": "align.lgvq.gsa_weight",
    "align.lgvq.beta": "align.lgvq.mtp_weight",
    "align.lgvq.gamma": "align.lgvq.ras_weight",
}
# Keys removed: old key -> why. Recipes using one are refused; stored configs drop it.
REMOVED = {
    "align.lgvq.width": "f_vt's width is the quantized map's channels, as in LG-VQ's code (model.embed_dim)",
}

# Keys added with a default that changes what runs: a stored config without one was trained
# the old way, and loads with the old value (recipes get today's default).
ADDED = {
    "align.lgvq.mask_padding": True,  # before: padding keys masked; now the official decoder's form
}


SECTION_TYPES = {**section_types(), **{name: obj for name, obj in vars(_generator_schema).items()
                                        if isinstance(obj, type) and name.endswith("Config")}}


class ConfigError(UserError):
    """A config that does not fit the schema; the message names the key."""


def one_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return "; ".join(lines)


def _pop_path(raw: dict, dotted: str) -> tuple[bool, Any]:
    *parents, leaf = dotted.split(".")
    node = raw
    for key in parents:
        node = node.get(key) if isinstance(node, dict) else None
        if node is None:
            return False, None
    if isinstance(node, dict) and leaf in node:
        return True, node.pop(leaf)
    return False, None


def _renamed(raw: dict, stored: bool) -> dict:
    """Recipes using an old key are refused with the new one named; stored configs are moved
    over, and get the old value of each key added since they were written."""
    for old, why in REMOVED.items():
        found, _ = _pop_path(raw, old)
        if found and not stored:
            raise ConfigError(f"config: {old} was removed ({why}): drop it")
    for old, new in RENAMED.items():
        found, value = _pop_path(raw, old)
        if not found:
            continue
        if not stored:
            raise ConfigError(f"config: {old} was renamed {new}: use {new}={value}")
        *parents, leaf = new.split(".")
        node = raw
        for key in parents:
            node = node.setdefault(key, {})
        node.setdefault(leaf, value)
    if stored:
        for key, before in ADDED.items():
            *parents, leaf = key.split(".")
            node = raw
            for name in parents:
                node = node.setdefault(name, {})
            node.setdefault(leaf, before)
    return raw


def chosen_section(section: str, choices: dict[str, type], default: str, raw: Mapping[str, Any],
                   stored: bool = False):
    """A section whose class its `name` chooses (quantizer, condition); STORED drops keys the
    class does not read (older versions stored every quantizer's keys in one flat section)."""
    raw = dict(raw)
    name = raw.get("name", default)
    if name not in choices:
        known = " or ".join(f"'{n}'" for n in choices)
        raise ConfigError(f"config: {section}.name='{name}' must be {known}")
    cls = choices[name]
    reads = [f.name for f in dataclasses.fields(cls)]
    unread = [key for key in raw if key not in reads]
    if unread and stored:
        raw = {k: v for k, v in raw.items() if k in reads}
    elif unread:
        raise ConfigError(f"config: {section}.{unread[0]} is not read by the {name} {section}, which reads "
                          f"{section}.{{{', '.join(reads)}}}; remove it")
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), raw))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"config: {section}.{exc.full_key}: {one_line(exc).split('; full_key')[0]}") from None


def quantizer_config(raw: Mapping[str, Any], stored: bool = False) -> QuantizerConfig:
    return chosen_section("quantizer", QUANTIZERS, "vq", raw, stored)


def config_from_dict(raw: Mapping[str, Any], stored: bool = False) -> Config:
    """RAW: the whole config as plain values (interpolations resolved). Not checked: call
    .check() for the semantic checks."""
    raw = _renamed(_plain_copy(raw), stored)
    quantizer = quantizer_config(raw.pop("quantizer", {}) or {}, stored)
    cfg = _typed(Config, raw)
    cfg.quantizer = quantizer
    return cfg


def generator_config_from_dict(raw: Mapping[str, Any], stored: bool = False) -> GeneratorConfig:
    """A generator recipe's (`family: generator`) RAW config -> GeneratorConfig, unchecked."""
    raw = _plain_copy(raw)
    condition = chosen_section("condition", CONDITIONS, "none", raw.pop("condition", {}) or {}, stored)
    cfg = _typed(GeneratorConfig, raw)
    cfg.condition = condition
    return cfg


def _typed(root: type, raw: dict):
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(root), raw))
    except ConfigKeyError as exc:
        raise ConfigError(_unknown_key(str(exc.full_key), root)) from None
    except OmegaConfBaseException as exc:
        raise ConfigError(f"config: {one_line(exc)}") from None


def _unknown_key(full_key: str, root: type = Config) -> str:
    """'data.bogus' -> a line that names the key and the keys its section has."""
    *parents, leaf = full_key.split(".")
    cls = root
    for name in parents:
        cls = next(f.type for f in dataclasses.fields(cls) if f.name == name)
        cls = SECTION_TYPES.get(cls, cls)
    keys = ", ".join(f.name for f in dataclasses.fields(cls))
    where = ".".join(parents) or "the top level"
    return f"config: {full_key} is not a config key ({where} has: {keys})"


def config_to_dict(cfg: Config | GeneratorConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _plain_copy(raw: Mapping[str, Any]) -> dict:
    return {k: _plain_copy(v) if isinstance(v, Mapping) else v for k, v in raw.items()}
