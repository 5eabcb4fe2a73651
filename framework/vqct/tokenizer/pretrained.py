"""A trained tokenizer as a directory of its own: `config.json` + `model.safetensors`.

`save_pretrained` writes the consolidated fp32 weights of what inference needs (encoder,
quantizer, decoder, the quant convs; not the alignment heads) and the resolved config; for
the vqct quantizer the codebook the transfer network produces, computed once, so that
encoding and decoding need neither the text model nor the graph. `from_pretrained` reads it
back on any machine with torch, safetensors and omegaconf (the typed config): no DeepSpeed,
Ray, MLflow or text model. `vqct export TARGET --out DIR` writes one from a trained tokenizer.

Images in: float (B, 3, H, W) in [-1, 1] at the config's `data.image_size`. Indices out:
(B, h, w) for vq; (B, h, w, topk + 1) for vqct (the adjective indices, then the noun index).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vqct.config.schema import Config, VQCTConfig
from vqct.config.typed import config_from_dict, config_to_dict
from vqct.errors import UserError
from vqct.files import atomic_write_text
from vqct.quantize import AdjNounQuantizer, FixedAdjNounQuantizer
from vqct.tokenizer.model import VQTokenizer, build_quantizer

FORMAT = "vqct-tokenizer"
VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def _inference_state(model: VQTokenizer) -> dict[str, torch.Tensor]:
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(("align.", "quantizer."))}
    quantizer = model.quantizer
    if isinstance(quantizer, AdjNounQuantizer):
        with torch.no_grad():
            was_training = quantizer.training
            state["quantizer.codes"] = quantizer.eval().codebook()  # the GCN without dropout
            quantizer.train(was_training)
    else:
        state.update({f"quantizer.{k}": v for k, v in quantizer.state_dict().items()})
    return {k: v.detach().float().cpu().contiguous() for k, v in state.items()}


def tokenizer_card(model: VQTokenizer, cfg: Config) -> dict:
    """What a user of the directory needs to know besides the weights."""
    q = model.quantizer
    index_shape = ["B", cfg.token_grid, cfg.token_grid] + ([q.topk + 1] if isinstance(q, AdjNounQuantizer) else [])
    return {"quantizer": cfg.quantizer.name, "codes": sum(q.groups.values()), "groups": q.groups,
            "topk": getattr(q, "topk", None), "image_size": cfg.data.image_size, "token_grid": cfg.token_grid,
            "input": f"float (B, 3, {cfg.data.image_size}, {cfg.data.image_size}) in [-1, 1]",
            "indices": index_shape}


def save_pretrained(model: VQTokenizer, cfg: Config, directory: str | Path) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(_inference_state(model), str(directory / WEIGHTS_FILE))
    meta = {"format": FORMAT, "version": VERSION, **tokenizer_card(model, cfg), "config": config_to_dict(cfg)}
    atomic_write_text(directory / CONFIG_FILE, json.dumps(meta, indent=1))
    return directory


def read_config(directory: str | Path) -> tuple[Config, dict]:
    path = Path(directory) / CONFIG_FILE
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{directory}: not a vqct tokenizer directory (no {CONFIG_FILE}); write one with "
                        "vqct export CHECKPOINT --out DIR") from None
    if meta.get("format") != FORMAT or int(meta.get("version", 0)) > VERSION:
        raise UserError(f"{path}: format {meta.get('format')} version {meta.get('version')} is not one this "
                        f"vqct reads ({FORMAT} up to version {VERSION})")
    return config_from_dict(meta["config"], stored=True), meta


def from_pretrained(directory: str | Path, device: str | torch.device = "cpu") -> tuple[VQTokenizer, Config]:
    """The tokenizer in eval mode (no alignment heads) and its config."""
    cfg, meta = read_config(directory)
    weights = load_file(str(Path(directory) / WEIGHTS_FILE))
    q = cfg.quantizer
    if isinstance(q, VQCTConfig):
        quantizer = FixedAdjNounQuantizer(weights["quantizer.codes"], meta["groups"]["adj"], q.adj_topk, q.beta,
                                          q.legacy_beta, q.lookup_memory_mb)
    else:
        quantizer = build_quantizer(q, cfg.model.embed_dim)
    model = VQTokenizer(cfg.model, quantizer, cfg.data.image_size)
    model.load_state_dict(weights, strict=True)
    return model.eval().to(device), cfg


def images_from_array(images, image_size: int) -> torch.Tensor:
    """What a tokenizer encodes, from either documented input: float (B, 3, S, S) in [-1, 1],
    or uint8 (B, S, S, 3) as image libraries hold pictures (scaled to [-1, 1] here)."""
    tensor = torch.as_tensor(images)
    if tensor.dtype == torch.uint8 and tensor.ndim == 4 and tensor.shape[-1] == 3:
        tensor = tensor.permute(0, 3, 1, 2).float() / 127.5 - 1.0
    elif tensor.is_floating_point() and tensor.ndim == 4 and tensor.shape[1] == 3:
        tensor = tensor.float()
    else:
        raise UserError(f"images of dtype {tensor.dtype} and shape {tuple(tensor.shape)}: give float "
                        f"(B, 3, {image_size}, {image_size}) in [-1, 1] or uint8 (B, {image_size}, {image_size}, 3)")
    if tuple(tensor.shape[2:]) != (image_size, image_size):
        raise UserError(f"images of {tensor.shape[2]}x{tensor.shape[3]} pixels: this tokenizer encodes "
                        f"{image_size}x{image_size}; resize them first")
    return tensor.contiguous()


def export(checkpoint: str, out: str) -> dict:
    """`vqct export`: a training checkpoint directory -> a tokenizer directory."""
    from vqct.tokenizer.load import load_tokenizer

    model, cfg = load_tokenizer(checkpoint, heads=False)
    directory = save_pretrained(model, cfg, out)
    return {"out": str(directory), "checkpoint": str(checkpoint), "recipe": cfg.recipe,
            **tokenizer_card(model, cfg), "files": sorted(p.name for p in directory.iterdir())}
