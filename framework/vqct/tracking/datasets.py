"""A run's training and validation shards as MLflow datasets, so that the runs table's Dataset
column and the run page show what the run read: the shard set's name, where it lives, a
digest of its shard list, and its shard and sample counts (where a manifest gives them)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings

from mlflow.data.meta_dataset import MetaDataset

from vqct.data.shards import known_counts


class ShardSet(MetaDataset):
    """WebDataset shards: MLflow's MetaDataset (it describes data it does not hold) plus a profile."""

    def __init__(self, urls: list[str], name: str):
        from mlflow.data.dataset_source_registry import resolve_dataset_source

        counts = known_counts(urls)
        self._profile = {"shards": len(urls), "samples": sum(counts.values()) if len(counts) == len(urls) else None,
                         "shards_with_known_count": len(counts)}
        self._urls = sorted(urls)
        with warnings.catch_warnings():  # two registered local-source classes claim a path; the same one
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(os.path.commonpath(urls) if _all_local(urls) else urls[0])
        super().__init__(source, name=name)

    def _compute_digest(self) -> str:
        # The shard list and the counts, not the bytes: hashing LAION-scale shards would take hours.
        blob = json.dumps({"urls": self._urls, "profile": self._profile})
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def profile(self) -> dict:
        return self._profile

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self._profile)}


def _all_local(urls: list[str]) -> bool:
    return all("://" not in u for u in urls)


def log_shard_sets(uri: str, run_id: str, recipe: str, train_urls: list[str], val_urls: list[str]) -> None:
    """Record both shard sets as the run's inputs; a tracking error is one warning."""
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.tracking import MlflowClient

    try:
        inputs = [DatasetInput(ShardSet(urls, f"{recipe}-{context}")._to_mlflow_entity(),
                               [InputTag("mlflow.data.context", context)])
                  for context, urls in (("train", train_urls), ("validation", val_urls))]
        MlflowClient(tracking_uri=uri).log_inputs(run_id, datasets=inputs)
    except Exception as exc:
        print(f"warning: could not log the run's datasets to MLflow: {type(exc).__name__}: {exc}", file=sys.stderr)
