"""`vqct downstream judge SHARDS --parser FILE`: the scene judge (eval/scene_judge.py) over a
set of scenes, generated (`vqct generate --conditions CODES --out-shards DIR` keeps each
sample's condition truth) or real (the judge's own accuracy), with FID in the parser's
feature space against `--real` held-out scenes, and Inception FID where its weights file is.
`picture_fid`: Inception FID alone, for pictures of real data (COCO, CUB) that no scene parser
can read."""

from __future__ import annotations

from itertools import islice

import torch

from vqct.data.decode import BadSample, decode_image, image_bytes
from vqct.data.scenes.truth import raw_samples, read_scenes
from vqct.data.shards import resolve_shards
from vqct.errors import UserError
from vqct.eval.completion import completion_scores
from vqct.eval.fid import WEIGHTS_FILE, InceptionFID, weights_path
from vqct.eval.objects import load_parser
from vqct.eval.reconstruction import to_unit
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


def _add_pictures(inception: InceptionFID, urls: list[str], size: int, limit: int | None, real: bool) -> tuple[int, int]:
    """Every picture of URLS (up to LIMIT), centre-cropped to SIZE as vqct eval reads them:
    (pictures added, samples passed over for a missing or unreadable image)."""
    count, skipped, batch = 0, 0, []
    for sample in raw_samples(urls):
        if limit is not None and count >= limit:
            break
        try:
            batch.append(to_unit(decode_image(image_bytes(sample) or b"", size)))
        except BadSample:
            skipped += 1
            continue
        count += 1
        if len(batch) == 64:
            inception.add(torch.stack(batch), real=real)
            batch = []
    if batch:
        inception.add(torch.stack(batch), real=real)
    return count, skipped


def require_inception_weights(inception_weights: str | None) -> None:
    """Refuse, before any sampling, a judge that has nothing to score with."""
    path = weights_path(inception_weights)
    if not path.is_file():
        raise UserError(f"without --parser the only score is Inception FID, and there is no Inception weights file at "
                        f"{path}: give --inception-weights FILE (torch-fidelity's {WEIGHTS_FILE})")


def picture_fid(shards: list[str], real: list[str], size: int, limit: int | None = None,
                inception_weights: str | None = None) -> dict:
    """Inception FID of the pictures of SHARDS against REAL ones at SIZE: the score of t2i and
    unconditional generation on data without the scenes' ground truth."""
    require_inception_weights(inception_weights)
    inception = InceptionFID(inception_weights, "cpu")
    pictures, skipped = _add_pictures(inception, resolve_shards(shards, "SHARDS"), size, limit, real=False)
    real_pictures, real_skipped = _add_pictures(inception, resolve_shards(real, "--real"), size, limit, real=True)
    if pictures < 2 or real_pictures < 2:
        raise UserError(f"Inception FID needs at least 2 pictures on each side; found {pictures} generated and "
                        f"{real_pictures} real")
    return {"fid_inception": inception.compute(), "pictures": pictures, "real_pictures": real_pictures,
            "skipped_pictures": skipped, "skipped_real_pictures": real_skipped}
