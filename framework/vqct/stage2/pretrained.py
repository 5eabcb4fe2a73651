"""A trained generator as a directory of its own: what its MLflow model holds, and what loads
with torch, safetensors, omegaconf and transformers only (no DeepSpeed, Ray or checkpoint).

    config.json            format, the generator config, the code set (layout, tokenizer digest)
    generator.safetensors  the generator's fp32 weights
    tokenizer/             the code set's tokenizer (vqct export's layout): decodes the codes
    text_model/            the caption condition's frozen text model (caption generators only)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from vqct.config.generator import CaptionConditionConfig
from vqct.config.typed import config_to_dict, generator_config_from_dict
from vqct.errors import UserError
from vqct.files import atomic_write_text
from vqct.records.storage import local_copy
from vqct.stage2.build import build_generator
from vqct.stage2.captions import text_width
from vqct.stage2.generator import CodeLayout
from vqct.stage2.load import TrainedGenerator, load_generator

FORMAT = "vqct-generator"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "generator.safetensors"
TOKENIZER_DIR = "tokenizer"
TEXT_MODEL_DIR = "text_model"


def export_generator(target: str | Path, directory: str | Path) -> Path:
    """A generator checkpoint or run directory -> a generator directory at DIRECTORY."""
    gen = load_generator(target)
    return write_generator_dir(gen.model, gen.config, gen.code_set, directory)


def write_generator_dir(model, cfg, code_set: dict, directory: str | Path) -> Path:
    """MODEL (a CodeGenerator of CFG over CODE_SET: layout, digest, tokenizer_dir) -> a generator
    directory at DIRECTORY."""
    from vqct.text.encoders import resolve_model_path

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / WEIGHTS_FILE))
    shutil.copytree(local_copy(code_set["tokenizer_dir"]), directory / TOKENIZER_DIR, dirs_exist_ok=True)
    if isinstance(cfg.condition, CaptionConditionConfig):
        shutil.copytree(resolve_model_path(cfg.condition.text_model), directory / TEXT_MODEL_DIR,
                        dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.onnx", "openvino*", "onnx"))
    meta = {"format": FORMAT, "config": config_to_dict(cfg),
            "code_set": {k: v for k, v in code_set.items() if k != "tokenizer_dir"}}
    atomic_write_text(directory / CONFIG_FILE, json.dumps(meta, indent=1))
    return directory


def from_pretrained_generator(directory: str | Path, device: str = "cpu") -> tuple[TrainedGenerator, object]:
    """-> (the generator, its tokenizer), both in eval mode."""
    from vqct.tokenizer.pretrained import from_pretrained

    directory = Path(directory)
    try:
        meta = json.loads((directory / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        raise UserError(f"{directory}: not a generator directory (no readable {CONFIG_FILE})") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{directory}: format {meta.get('format')!r} is not {FORMAT!r}")
    cfg = generator_config_from_dict(meta["config"], stored=True)
    encoder, text_dim = None, 0
    if isinstance(cfg.condition, CaptionConditionConfig):
        from vqct.text.encoders import TextEncoder

        encoder = TextEncoder(str(directory / TEXT_MODEL_DIR), cfg.condition.tokens + 2, device)
        text_dim = text_width(encoder)
    model = build_generator(cfg, CodeLayout.from_dict(meta["code_set"]["layout"]), text_dim)
    model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
    code_set = {**meta["code_set"], "tokenizer_dir": str(directory / TOKENIZER_DIR)}
    tokenizer, _ = from_pretrained(directory / TOKENIZER_DIR, device)
    return TrainedGenerator(model.eval().to(device), cfg, code_set, encoder, directory), tokenizer


def is_generator_dir(path: Path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file() and (Path(path) / WEIGHTS_FILE).is_file()


def open_generator(target: str | Path, device: str = "cpu") -> tuple[TrainedGenerator, object]:
    """A generator directory, a checkpoint, a run directory or a run name under runs/ ->
    (the generator, the tokenizer of its codes). models:/ URIs are fetched by the caller
    (tracking.registry.fetch_generator), which hands over the directory."""
    from vqct.tokenizer.pretrained import from_pretrained

    path = Path(target).expanduser()
    if is_generator_dir(path):
        return from_pretrained_generator(path, device)
    gen = load_generator(target, device)
    return gen, from_pretrained(gen.code_set["tokenizer_dir"], device)[0]
