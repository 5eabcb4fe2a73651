"""`vqct downstream judge SHARDS --parser FILE`: the scene judge (eval/scene_judge.py) over a
set of scenes, generated (`vqct generate --conditions CODES --out-shards DIR` keeps each
sample's condition truth) or real (the judge's own accuracy), with FID in the parser's
feature space against `--real` held-out scenes, and Inception FID where its weights file is."""

from __future__ import annotations

from itertools import islice

from vqct.data.scenes.truth import read_scenes
from vqct.data.shards import resolve_shards
from vqct.errors import UserError
from vqct.eval.completion import completion_scores
from vqct.eval.fid import InceptionFID
from vqct.eval.objects import load_parser
from vqct.eval.scene_judge import AskedScene, asked_scenes, judge_scenes


def _rotated(scenes: list[AskedScene]) -> list[AskedScene]:
    """The control: each picture judged against the next scene's ask (its map and objects)."""
    return [AskedScene(s.key, s.picture, n.classes, n.objects, n.relation)
            for s, n in zip(scenes, scenes[1:] + scenes[:1])]


def _completion(scenes: list[AskedScene], of: list[str], size: int) -> dict:
    real = {s.key: s.picture for s in asked_scenes(resolve_shards(of, "--completion-of"), size)}
    return completion_scores(scenes, real)


FID_NOTE = ("fid_parser: Frechet distance in the scene parser's feature space, not Inception FID; "
            "fid_inception: Inception FID (torch-fidelity's Inception-v3 from --inception-weights), or why it was "
            "skipped")


def judge(shards: list[str], parser_path: str, real: list[str] | None = None, limit: int | None = None,
          mismatched: bool = False, completion_of: list[str] | None = None,
          inception_weights: str | None = None) -> dict:
    """INCEPTION_WEIGHTS: torch-fidelity's Inception-v3 file (default: $VQCT_INCEPTION_WEIGHTS or
    the torch hub cache); with REAL, fid_inception when it is there."""
    parser, record = load_parser(parser_path, "cpu")
    size = int(record.get("image_size", 64))
    scenes = list(islice(asked_scenes(resolve_shards(shards, "SHARDS"), size), limit))
    if not scenes:
        raise UserError(f"{' '.join(shards)}: no sample carries jpg with the scenes ground truth (json, seg.png, inst.png); "
                        "judge scenes shards or `vqct generate --out-shards` output")
    real_pictures = read_scenes(resolve_shards(real, "--real"), size, limit)[0] if real else None
    inception = InceptionFID(inception_weights, "cpu") if real else None
    scores = judge_scenes(parser, _rotated(scenes) if mismatched else scenes, parser.num_classes, real_pictures,
                          inception=inception)
    if completion_of:
        scores.update(_completion(scenes, completion_of, size))
    return {"shards": shards, "parser": parser_path, "mismatched": mismatched,
            "real": real, "judge": scores, "fid_note": FID_NOTE}
