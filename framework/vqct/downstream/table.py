"""The downstream table (`vqct downstream table FILES`): one row per tokenizer recipe and task,
mean ± standard deviation over its seeds, from the JSON lines `vqct downstream` printed."""

from __future__ import annotations

import sys
from pathlib import Path

from vqct.errors import UserError
from vqct.records.command_output import read_last_json
from vqct.tracking.compare import cell, mean_sd

# Inception FID only where its weights file was there: "-" in a row without it.
_FIDS = [("test/fid_parser", "fid_parser", "{:.4f}"), ("test/fid_inception", "Inception FID", "{:.2f}")]
COLUMNS = {
    "vqa": [("test/accuracy", "accuracy", "{:.3f}"), ("test/accuracy_attribute", "attribute", "{:.3f}"),
            ("test/accuracy_count", "count", "{:.3f}"), ("test/accuracy_existence", "existence", "{:.3f}"),
            ("test/accuracy_relation", "relation", "{:.3f}"),
            ("test_compositional/accuracy", "compositional", "{:.3f}")],
    "caption": [("test/bleu4", "BLEU-4", "{:.3f}"), ("test/rouge_l", "ROUGE-L", "{:.3f}"),
                ("test/cider_d", "CIDEr-D", "{:.3f}"), ("test/meteor", "METEOR", "{:.3f}"),
                ("test_compositional/cider_d", "CIDEr-D (compositional)", "{:.3f}")],
    "t2i": [("test/objects_found", "objects found", "{:.3f}"), ("test/shapes_found", "shapes found", "{:.3f}"),
            *_FIDS],
    "relations": [("test/relations_held", "relations held", "{:.3f}"),
                  ("test/relation_objects_found", "both objects found", "{:.3f}"), *_FIDS],
    "semantic": [("test/miou", "mIoU", "{:.3f}"), *_FIDS],
    "completion": [("test/completion_psnr_generated_half", "PSNR generated half (dB)", "{:.2f}"),
                   ("test/completion_psnr_given_half", "PSNR given half (dB)", "{:.2f}"), *_FIDS],
    "unconditional": _FIDS,
}


def _held_out(scores: dict) -> str:
    """The held-out set the "test" columns read: `test` where the result has it (the scenes),
    else its first one, whatever its name (a COCO or CUB set's `val`)."""
    splits = [key.split("/", 1)[0] for key in scores]
    return "test" if "test" in splits or not splits else splits[0]


def _score(scores: dict, key: str):
    split, metric = key.split("/", 1)
    return scores.get(f"{_held_out(scores)}/{metric}" if split == "test" else key)


def _label(result: dict) -> str:
    settings = result["settings"]
    recipe = result["tokenizer"].get("recipe") or result["tokenizer"]["digest"][:12]
    held_out = _held_out(result["scores"])
    notes = ([settings["features"]] if settings.get("features", "vectors") != "vectors" else []) + \
        (["images shuffled"] if settings.get("shuffle_images") else []) + \
        ([f"on {held_out}"] if held_out != "test" else [])
    return f"{recipe} ({', '.join(notes)})" if notes else recipe


def summarise_downstream(results: list[dict]) -> dict[str, list[dict]]:
    """Per task, per tokenizer label in first-seen order: runs, seeds and each column's mean/sd."""
    tables: dict[str, dict[str, list[dict]]] = {}
    for result in results:
        tables.setdefault(result["task"], {}).setdefault(_label(result), []).append(result)
    summary = {}
    for task, groups in tables.items():
        rows = []
        for label, runs in groups.items():
            row = {"tokenizer": label, "runs": len(runs), "seeds": [r["settings"]["seed"] for r in runs]}
            for key, _, _ in COLUMNS.get(task, []):
                values = [float(_score(r["scores"], key)) for r in runs
                          if isinstance(_score(r["scores"], key), (int, float))]
                if values:
                    row[key] = mean_sd(values)
            rows.append(row)
        summary[task] = rows
    return summary


def markdown(summary: dict[str, list[dict]]) -> str:
    parts = []
    for task, rows in summary.items():
        columns = COLUMNS.get(task, [])
        parts += [f"{task}:", "", "| tokenizer | seeds | " + " | ".join(t for _, t, _ in columns) + " |",
                  "|" + "|".join("---" for _ in range(len(columns) + 2)) + "|"]
        parts += [f"| {r['tokenizer']} | {r['runs']} | " + " | ".join(cell(r.get(k), f) for k, _, f in columns) + " |"
                  for r in rows]
        parts.append("")
    return "\n".join(parts)


def downstream_table(paths: list[str]) -> dict:
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise UserError(f"{missing[0]}: no such file (give files holding `vqct downstream`'s JSON line)")
    results = [read_last_json(p) for p in paths]
    if any("task" not in r or "scores" not in r for r in results):
        bad = next(p for p, r in zip(paths, results) if "task" not in r or "scores" not in r)
        raise UserError(f"{bad}: its last line is not the result of a `vqct downstream` task")
    summary = summarise_downstream(results)
    print(markdown(summary), file=sys.stderr)
    return {"downstream": summary}
