"""Typed recipe schema and Hydra composition (driver side only)."""

from vqct.config.compose import config_hash, flatten, load_recipe, recipes_dir
from vqct.config.schema import Config

__all__ = ["Config", "config_hash", "flatten", "load_recipe", "recipes_dir"]
