"""The priors cache: word embeddings, vocabularies with counts, and the graph, built once
on the driver and loaded by every worker.

A directory `<text.priors_dir>/<recipe>-<key>/` with `priors.safetensors` (tensors),
`vocab.json` (words, counts, pairs, where the words came from) and `manifest.json` (the
inputs, their hash, and each file's sha256). The key hashes every input, so a changed
text model, tagger, vocabulary setting, prompt or shard list builds a new cache; a cache
whose files don't match their manifest is rebuilt with a warning. Never a pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vqct.config.schema import Config, TextConfig
from vqct.errors import UserError
from vqct.files import sha256_file

FILES = ("priors.safetensors", "vocab.json")


def _shard_identity(url: str) -> str:
    if os.path.isfile(url):
        stat = os.stat(url)
        return f"{url}:{stat.st_size}:{int(stat.st_mtime)}"
    return url


def priors_inputs(text: TextConfig, shard_urls: list[str]) -> dict:
    """Everything the cache depends on (text.priors_dir only says where it lives)."""
    return {
        "text_model": text.model,
        "pos_pipeline": text.pos_pipeline,
        "min_count": text.min_count,
        "adjectives": text.adjectives,
        "nouns": text.nouns,
        "max_captions": text.max_captions,
        "prompt_adj": text.prompt_adj,
        "prompt_noun": text.prompt_noun,
        "knn": text.knn,
        "knn_weight": text.knn_weight,
        "shards": [_shard_identity(u) for u in shard_urls],
    }


def priors_path(cfg: Config, shard_urls: list[str]) -> Path:
    key = hashlib.sha256(json.dumps(priors_inputs(cfg.text, shard_urls), sort_keys=True).encode()).hexdigest()[:12]
    return Path(cfg.text.priors_dir).expanduser().resolve() / f"{cfg.recipe}-{key}"


def read_captions(urls: list[str], limit: int) -> list[str]:
    """Up to LIMIT captions from the shards, in shard order (images are not decoded)."""
    import webdataset as wds
    from tqdm import tqdm

    from vqct.records.storage import enable_s3_shards

    enable_s3_shards()
    captions = []
    dataset = wds.WebDataset(urls, shardshuffle=False, handler=wds.warn_and_continue, empty_check=False)
    with tqdm(total=limit, desc="captions", unit="cap", file=sys.stderr, mininterval=2.0) as bar:
        for sample in dataset:
            raw = sample.get("txt")
            if raw is None:
                continue
            try:
                captions.append(raw.decode("utf-8").strip())
            except UnicodeDecodeError:
                continue
            bar.update(1)
            if len(captions) >= limit:
                break
    return [c for c in captions if c]


def verify(path: Path) -> bool:
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
        return all(sha256_file(path / name) == manifest["sha256"][name] for name in FILES)
    except (OSError, ValueError, KeyError):
        return False


def build_priors(text: TextConfig, shard_urls: list[str], path: Path) -> dict:
    """Build the cache at PATH (written to a temporary folder, then renamed)."""
    from vqct.text.encoders import TextEncoder
    from vqct.text.graph import build_graph
    from vqct.text.pos_vocab import build_vocabulary, load_pipeline

    nlp = load_pipeline(text.pos_pipeline)
    encoder = TextEncoder(text.model)
    captions = read_captions(shard_urls, text.max_captions)
    vocab = build_vocabulary(captions, nlp, text.min_count, text.adjectives, text.nouns)
    print(f"priors: {len(vocab.adjectives)} adjectives, {len(vocab.nouns)} nouns from {vocab.report}",
          file=sys.stderr)
    adj_emb = encoder.embed_sentences([text.prompt_adj.format(w) for w in vocab.adjectives])
    noun_emb = encoder.embed_sentences([text.prompt_noun.format(w) for w in vocab.nouns])
    edge_index, edge_weight = build_graph(vocab.adjectives, vocab.nouns, vocab.pairs,
                                          torch.cat([adj_emb, noun_emb]), text.knn, text.knn_weight)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    save_file({"adjective_embeddings": adj_emb.contiguous(), "noun_embeddings": noun_emb.contiguous(),
               "edge_index": edge_index.contiguous(), "edge_weight": edge_weight.contiguous()},
              str(tmp / "priors.safetensors"))
    (tmp / "vocab.json").write_text(json.dumps({
        "adjectives": vocab.adjectives, "nouns": vocab.nouns,
        "adjective_counts": vocab.adjective_counts, "noun_counts": vocab.noun_counts,
        "pairs": vocab.pairs, "report": vocab.report}, indent=1))
    manifest = {"inputs": priors_inputs(text, shard_urls), "text_model": text.model,
                "embedding_dim": int(adj_emb.shape[1]), "edges": int(edge_index.shape[1]),
                "report": vocab.report, "sha256": {name: sha256_file(tmp / name) for name in FILES}}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    return manifest


def ensure_priors(cfg: Config, shard_urls: list[str], force: bool = False) -> tuple[Path, dict, bool]:
    """The cache for CFG's inputs: reused when valid, (re)built otherwise.
    Returns (path, manifest, built)."""
    path = priors_path(cfg, shard_urls)
    if path.exists() and not force:
        if verify(path):
            return path, json.loads((path / "manifest.json").read_text()), False
        print(f"warning: priors cache {path} is corrupt or incomplete: rebuilding it", file=sys.stderr)
    return path, build_priors(cfg.text, shard_urls, path), True


def load_priors(path: str | Path) -> dict:
    """Tensors and vocabulary of a cache (on workers; the driver has verified it)."""
    path = Path(path)
    try:
        tensors = load_file(str(path / "priors.safetensors"))
        vocab = json.loads((path / "vocab.json").read_text())
    except Exception as exc:
        raise UserError(f"priors cache {path} cannot be read ({type(exc).__name__}): "
                        "rebuild it with vqct priors build RECIPE --force") from None
    return {**tensors, "adjectives": vocab["adjectives"], "nouns": vocab["nouns"]}
