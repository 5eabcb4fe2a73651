"""The typed run configuration (schema), Hydra composition of recipes, and their conversions."""

from vqct.config.compose import config_hash, flatten, load_recipe, recipes_dir
from vqct.config.schema import (AlignConfig, Config, DataConfig, LGVQConfig, LossConfig, ModelConfig, OptimConfig,
                                QuantizerConfig, TextConfig, TrackingConfig, TrainerConfig, VLTConfig, VQConfig,
                                VQCTConfig)
from vqct.config.typed import config_from_dict, config_to_dict

__all__ = ["AlignConfig", "Config", "DataConfig", "LGVQConfig", "LossConfig", "ModelConfig", "OptimConfig",
           "QuantizerConfig", "TextConfig", "TrackingConfig", "TrainerConfig", "VLTConfig", "VQConfig", "VQCTConfig",
           "config_from_dict", "config_to_dict", "config_hash", "flatten", "load_recipe", "recipes_dir"]
