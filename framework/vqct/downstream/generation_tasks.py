"""`vqct downstream t2i|semantic|completion|unconditional GENERATOR --eval CODES --parser FILE`:
a generator over a tokenizer's codes samples one picture per held-out condition (`vqct generate
--conditions`, one Ray task per shard, resumable), and the scene judge scores the pictures
against what each was asked for; the result is logged like the other downstream runs, under the
tokenizer's run.

| task | the generator's condition | sampled with | scores |
|---|---|---|---|
| t2i | caption | the sample's first caption line | objects found (shape and colour), shapes found, fid_parser |
| relations | caption | the sample's relation line ("a red circle left of a blue star") | relations held, both objects found, fid_parser |
| semantic | segmentation | the sample's class map | mIoU against the map, fid_parser |
| completion | caption | its caption and the top half of its real codes | PSNR of the generated and the given half, fid_parser |
| unconditional | caption or segmentation | the null condition | fid_parser |

fid_parser is the Frechet distance in the scene parser's feature space against `--real` held-out
scenes, labelled as such: not Inception FID (docs/downstream.md). Inception FID (fid_inception)
joins it, logged like the other scores, where torch-fidelity's weights file is on disk
(`--inception-weights`).

On real data (`vqct data pack coco|cub` shards, tokenized) no scene parser applies: without
`--parser`, t2i and unconditional are scored by Inception FID against `--real` alone, and the
weights file is then required.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from vqct.config.schema import tracking_uri
from vqct.data.scenes.language import RELATION_LINE
from vqct.data.shards import resolve_shards
from vqct.downstream.judge import FID_NOTE, judge, picture_fid, require_inception_weights
from vqct.errors import UserError
from vqct.records.code_manifest import read_code_manifest
from vqct.stage2.sampling import SamplingConfig
from vqct.tracking.downstream_run import log_downstream_run


@dataclass(frozen=True)
class GenerationTask:
    conditions: tuple[str, ...]  # the generator conditions the task can use
    complete: bool = False
    null_condition: bool = False
    caption_line: int = 0  # the line of each held-out caption the generator is given


TASKS = {"t2i": GenerationTask(("caption",)), "relations": GenerationTask(("caption",), caption_line=RELATION_LINE),
         "semantic": GenerationTask(("segmentation",)), "completion": GenerationTask(("caption",), complete=True),
         "unconditional": GenerationTask(("caption", "segmentation"), null_condition=True)}
SCORES = {"t2i": ("objects_found", "shapes_found", "fid_parser"),
          "relations": ("relations_held", "relation_objects_found", "fid_parser"), "semantic": ("miou", "fid_parser"),
          "completion": ("completion_psnr_generated_half", "completion_psnr_given_half", "fid_parser"),
          "unconditional": ("fid_parser",)}
FID_ONLY = ("t2i", "unconditional")  # the tasks with a score that needs no scene parser (real data)


def _generator_condition(generator_dir: Path) -> str:
    from vqct.stage2.pretrained import CONFIG_FILE

    return json.loads((generator_dir / CONFIG_FILE).read_text())["config"]["condition"]["name"]


def _sample(task: str, target: str, eval_dir: str, out: Path, sampling: SamplingConfig, seed: int) -> dict:
    from vqct.launch.sample_shards import GENERATOR_DIR, sample_to_shards
    from vqct.stage2.pretrained import export_generator, is_generator_dir

    spec = TASKS[task]
    generator_dir = Path(target) if is_generator_dir(Path(target)) else export_generator(target, out / GENERATOR_DIR)
    condition = _generator_condition(generator_dir)
    if condition not in spec.conditions:
        raise UserError(f"downstream {task} needs a generator conditioned on {' or '.join(spec.conditions)}; "
                        f"{target} is conditioned on {condition} (train one with condition.name=...)")
    return sample_to_shards(str(generator_dir), eval_dir, str(out), sampling, seed, spec.complete)


def _check_judge(task: str, parser: str | None, real: list[str], inception_weights: str | None) -> None:
    if parser is not None:
        return
    if task not in FID_ONLY:
        raise UserError(f"downstream {task} is scored against the scenes' ground truth: give --parser FILE (vqct "
                        f"parser); without one only {' and '.join(FID_ONLY)} run, scored by Inception FID")
    if not real:
        raise UserError(f"downstream {task} without --parser scores Inception FID against real pictures: give --real DIR")
    resolve_shards(real, "--real")  # a wrong path is said now, not after the sampling
    require_inception_weights(inception_weights)


def _judged(task: str, out: str, parser: str | None, real: list[str], limit: int | None, scenes: list[str] | None,
            inception_weights: str | None, image_size: int) -> dict:
    if parser is None:
        return picture_fid([out], real, image_size, limit, inception_weights)
    return judge([out], parser, real, limit, completion_of=scenes if task == "completion" else None,
                 inception_weights=inception_weights)["judge"]


def run_generation_task(task: str, target: str, eval_dir: str, parser: str | None, real: list[str], out: str,
                        sampling: SamplingConfig, seed: int = 0, scenes: list[str] | None = None,
                        limit: int | None = None, uri: str | None = None, inception_weights: str | None = None) -> dict:
    """Sample TASK's pictures for EVAL_DIR's conditions into OUT, judge them; the results.
    SCENES: the real scenes EVAL_DIR was tokenized from (completion's PSNR). Without PARSER
    (real data), Inception FID against REAL is the one score (t2i and unconditional)."""
    if task not in TASKS:
        raise UserError(f"downstream generation task {task!r}: give one of {', '.join(TASKS)}")
    _check_judge(task, parser, real, inception_weights)
    if task == "completion" and not scenes:
        raise UserError("downstream completion: give --scenes DIR, the real scenes the --eval codes were made from")
    identity = read_code_manifest(eval_dir)["tokenizer"]
    if TASKS[task].null_condition:  # the null condition has no guidance to mix with
        sampling = SamplingConfig(**{**asdict(sampling), "null_condition": True, "cfg_scale": None})
    if TASKS[task].caption_line:
        sampling = SamplingConfig(**{**asdict(sampling), "caption_line": TASKS[task].caption_line})
    started = time.time()
    sampled = _sample(task, target, eval_dir, Path(out), sampling, seed)
    judged = _judged(task, out, parser, real, limit, scenes, inception_weights, identity["image_size"])
    name = Path(eval_dir).resolve().name
    scores = {f"{name}/{k}": v for k, v in judged.items() if isinstance(v, (int, float))}
    settings = {"generator": str(target), "seed": seed, **asdict(sampling), "limit": limit}
    result = {"task": task, "tokenizer": identity, "settings": settings, "scores": scores,
              "samples": sampled["samples"], "seconds": round(time.time() - started, 1), "fid_note": FID_NOTE,
              "fid_inception": judged.get("fid_inception")}
    uri = tracking_uri(uri)
    run_name = f"{task}-{identity.get('recipe')}-{identity['digest'][:8]}-seed{seed}"
    result["run_id"] = log_downstream_run(uri, task, identity, {"task": task, "eval_codes": eval_dir, **settings},
                                          scores, [], {"result.json": json.dumps(result, indent=1)}, run_name)
    result["tracking_uri"] = uri
    return result
