"""A code-shard set's `manifest.json` (`vqct data tokenize`): which tokenizer made the codes,
the layout of a grid position, and every shard with its count and sha256.

Codes are only meaningful to the tokenizer that made them: a generator trained on codes of two
tokenizers learns nonsense, so every reader of several sets checks that they agree
(same_tokenizer) and refuses with one line when they do not.
"""

from __future__ import annotations

import json
from pathlib import Path

from vqct.errors import UserError

FORMAT = "vqct-codes/1"
MANIFEST = "manifest.json"
TOKENIZER_DIR = "tokenizer"  # the set's own copy of its tokenizer (vqct export's layout)
# A sample of a code shard: its codes, its caption lines, and the source sample's ground truth
# under the source's own extensions (scenes: seg.png, inst.png, json).
CODES_EXT = "codes.npy"


def tokenizer_identity(digest: str, target: str, recipe: str, quantizer: str, layout: dict,
                       image_size: int, run_id: str | None = None, model_uri: str | None = None) -> dict:
    """DIGEST (sha256 of the tokenizer's weights) decides sameness; the rest tells a reader what
    it was: the target as given, the recipe, the MLflow run and registry version if known."""
    return {"digest": digest, "target": target, "recipe": recipe, "quantizer": quantizer, "layout": layout,
            "image_size": image_size, "run_id": run_id, "model_uri": model_uri}


def read_code_manifest(directory: str | Path) -> dict:
    path = Path(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        raise UserError(f"{directory}: no readable {MANIFEST}; code shards are made by "
                        "`vqct data tokenize TOKENIZER SHARDS --out DIR`") from None
    if manifest.get("format") != FORMAT:
        raise UserError(f"{path}: format {manifest.get('format')!r} is not {FORMAT!r}; "
                        "rewrite the codes with this version's `vqct data tokenize`")
    return manifest


def same_tokenizer(directories: list[str | Path]) -> dict:
    """The tokenizer identity all DIRECTORIES share; UserError naming the first that differs."""
    first, identity = None, None
    for directory in directories:
        theirs = read_code_manifest(directory)["tokenizer"]
        if identity is None:
            first, identity = directory, theirs
        elif theirs["digest"] != identity["digest"]:
            raise UserError(f"{directory} holds codes of tokenizer {theirs['target']} ({theirs['digest'][:12]}), "
                            f"{first} of {identity['target']} ({identity['digest'][:12]}): codes of two tokenizers "
                            "cannot train one generator; tokenize both splits with the same tokenizer")
    if identity is None:
        raise UserError("no code shard directory given")
    return identity
