"""A code-shard set (`vqct data tokenize`) read whole: per sample its codes, caption lines and
questions with their answers (the scenes' `json`), in shard order.

Why in memory and not streamed like training data: downstream sets are evaluation-sized (the
scenes' 20,000 training scenes hold 20 MB of codes) and the small downstream models take many
passes over them, so streaming would decode every tar again each epoch for nothing.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vqct.data.scenes.truth import raw_samples
from vqct.errors import UserError
from vqct.records.code_manifest import CODES_EXT, TOKENIZER_DIR, read_code_manifest


@dataclass
class CodeSet:
    directory: Path
    tokenizer: dict  # the manifest's tokenizer identity (digest, target, run_id, ...)
    codes: torch.Tensor  # (N, h, w, columns) int64
    captions: list[list[str]]  # per sample, its caption lines
    questions: list[list[dict]]  # per sample, {"type", "question", "answer"}
    keys: list[str]
    skipped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def tokenizer_dir(self) -> Path:
        return self.directory / TOKENIZER_DIR


def _questions(sample: dict) -> list[dict]:
    if "json" not in sample:
        return []
    found = json.loads(sample["json"]).get("questions", [])
    return [{"type": q["type"], "question": q["question"], "answer": q["answer"]} for q in found]


def read_code_set(directory: str | Path, limit: int | None = None) -> CodeSet:
    """The first LIMIT samples (all when None) of the code set at DIRECTORY."""
    directory = Path(directory)
    manifest = read_code_manifest(directory)
    if not manifest.get("complete"):
        raise UserError(f"{directory}: the code set is incomplete (its `vqct data tokenize` was stopped); "
                        "run the same command again to finish it")
    layout = manifest["tokenizer"]["layout"]
    shape = (layout["height"], layout["width"], sum(group[2] for group in layout["groups"]))
    codes, captions, questions, keys, skipped = [], [], [], [], {}
    for sample in raw_samples([str(directory / shard["name"]) for shard in manifest["shards"]]):
        grid = np.load(io.BytesIO(sample[CODES_EXT]), allow_pickle=False) if CODES_EXT in sample else None
        if grid is None or grid.shape != shape:
            skipped["bad_codes"] = skipped.get("bad_codes", 0) + 1
            continue
        codes.append(torch.from_numpy(grid.astype(np.int64)))
        text = sample.get("txt", b"").decode("utf-8", errors="replace")
        captions.append([line.strip() for line in text.splitlines() if line.strip()])
        questions.append(_questions(sample))
        keys.append(sample["__key__"])
        if limit is not None and len(keys) >= limit:
            break
    if not keys:
        raise UserError(f"{directory}: no readable code samples")
    return CodeSet(directory, manifest["tokenizer"], torch.stack(codes), captions, questions, keys, skipped)
