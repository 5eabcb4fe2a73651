"""`vqct downstream vqa|caption`: one downstream model over a tokenizer's frozen codes, trained
on one code set, scored on each held-out one, logged to MLflow under the tokenizer's run.

Every tokenizer compared gets the same model size, steps and seed (config/downstream.py), so
the scores differ only by what the codes carry.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from vqct.config.downstream import CaptionSettings, DownstreamConfig, VQASettings
from vqct.config.schema import tracking_uri
from vqct.downstream.captioning import captioning_scores, train_captioner
from vqct.downstream.code_features import CodeFeatures, column_code_counts
from vqct.downstream.code_sets import CodeSet, read_code_set
from vqct.downstream.truth_codes import TRUTH
from vqct.downstream.vqa import train_vqa, vqa_accuracy
from vqct.errors import UserError
from vqct.records.code_manifest import same_tokenizer
from vqct.tokenizer.pretrained import from_pretrained
from vqct.tracking.downstream_run import log_downstream_run


def _features(train: CodeSet, cfg: DownstreamConfig) -> CodeFeatures:
    if cfg.features == "vectors" and train.tokenizer["target"] == TRUTH:
        raise UserError(f"{train.directory}: ground-truth codes have no code vectors; give features=indices")
    # only the code vectors need the tokenizer; a learned table needs the codebook sizes alone
    quantizer = from_pretrained(train.tokenizer_dir)[0].quantizer if cfg.features == "vectors" else None
    return CodeFeatures(quantizer, cfg.features, column_code_counts(train.tokenizer["layout"]))


def _shuffled(codes: CodeSet, seed: int) -> CodeSet:
    order = torch.randperm(len(codes), generator=torch.Generator().manual_seed(seed))
    codes.codes = codes.codes[order]
    return codes


def _eval_name(directory: str) -> str:
    return Path(directory).resolve().name


def _vqa(train: CodeSet, held_out: dict[str, CodeSet], cfg: VQASettings, features: CodeFeatures):
    trained = train_vqa(train, features, cfg)
    scores = {f"{name}/{k}": v for name, codes in held_out.items()
              for k, v in vqa_accuracy(trained, codes, cfg.question_length).items()}
    return scores, trained.losses, {}


def _caption(train: CodeSet, held_out: dict[str, CodeSet], cfg: CaptionSettings, features: CodeFeatures):
    trained = train_captioner(train, features, cfg)
    scores, texts = {}, {}
    for name, codes in held_out.items():
        found, written = captioning_scores(trained, codes, cfg.meteor)
        scores.update({f"{name}/{k}": v for k, v in found.items()})
        texts[f"captions/{name}.jsonl"] = "".join(json.dumps(row) + "\n" for row in written)
    return scores, trained.losses, texts


TASKS = {"vqa": _vqa, "caption": _caption}


def run_downstream(task: str, train_dir: str, eval_dirs: list[str], cfg: DownstreamConfig,
                   uri: str | None = None) -> dict:
    """Train TASK's model on TRAIN_DIR's codes, score it on each of EVAL_DIRS; the results."""
    if not eval_dirs:
        raise UserError(f"downstream {task}: give at least one held-out code set with --eval DIR")
    names = [_eval_name(d) for d in eval_dirs]
    if len(set(names)) != len(names):
        raise UserError(f"downstream {task}: held-out sets need distinct directory names, got {', '.join(names)}")
    identity = same_tokenizer([train_dir, *eval_dirs])
    started = time.time()
    torch.manual_seed(cfg.seed)
    train = read_code_set(train_dir, cfg.train_limit)
    held_out = {name: read_code_set(d, cfg.eval_limit) for name, d in zip(names, eval_dirs)}
    if cfg.shuffle_images:
        train = _shuffled(train, cfg.seed)
        held_out = {name: _shuffled(codes, cfg.seed + 1 + i) for i, (name, codes) in enumerate(held_out.items())}
    scores, losses, texts = TASKS[task](train, held_out, cfg, _features(train, cfg))
    params = {"task": task, "train_codes": str(Path(train_dir).resolve()), "train_samples": len(train),
              **vars(cfg)}
    result = {"task": task, "tokenizer": identity, "settings": vars(cfg), "scores": scores,
              "final_loss": sum(losses[-50:]) / len(losses[-50:]), "seconds": round(time.time() - started, 1),
              "train_samples": len(train), "skipped": {"train": train.skipped,
                                                       **{n: c.skipped for n, c in held_out.items()}}}
    uri = tracking_uri(uri)
    run_name = f"{task}-{identity.get('recipe')}-{identity['digest'][:8]}-seed{cfg.seed}"
    result["run_id"] = log_downstream_run(uri, task, identity, params, {**scores, "final_loss": result["final_loss"]},
                                          losses, {**texts, "result.json": json.dumps(result, indent=1)}, run_name)
    result["tracking_uri"] = uri
    return result
