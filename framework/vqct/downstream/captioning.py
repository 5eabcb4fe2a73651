"""Captioning from frozen codes: train the Captioner on every (image, caption line) pair of the
training set, write one greedy caption per held-out image, score it against all the image's
reference lines (caption_metrics)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from vqct.config.downstream import CaptionSettings
from vqct.downstream.caption_metrics import caption_scores
from vqct.downstream.captioner import Captioner
from vqct.downstream.code_features import CodeFeatures
from vqct.downstream.code_sets import CodeSet
from vqct.downstream.fit import fit
from vqct.downstream.image_reader import ImageReader
from vqct.downstream.words import Vocabulary
from vqct.errors import UserError


@dataclass
class TrainedCaptioner:
    model: Captioner
    vocab: Vocabulary
    losses: list[float]


def train_captioner(train: CodeSet, features: CodeFeatures, cfg: CaptionSettings) -> TrainedCaptioner:
    pairs = [(i, line) for i, lines in enumerate(train.captions) for line in lines]
    if not pairs:
        raise UserError(f"{train.directory}: its samples carry no captions (txt)")
    vocab = Vocabulary.build(line for _, line in pairs)
    image = torch.tensor([i for i, _ in pairs])
    words = torch.tensor([vocab.encode(line, cfg.caption_length + 1, ends=True) for _, line in pairs])
    reader = ImageReader(features, tuple(train.codes.shape[1:3]), cfg.width, cfg.patch)
    model = Captioner(reader, len(vocab), cfg.caption_length, cfg.width,
                      cfg.layers, cfg.heads, cfg.dropout)

    def loss_of(batch: torch.Tensor) -> torch.Tensor:
        seq = words[batch]
        logits = model(train.codes[image[batch]], seq[:, :-1])
        return F.cross_entropy(logits.flatten(0, 1), seq[:, 1:].flatten(), ignore_index=vocab.pad)

    losses = fit(model, loss_of, len(pairs), cfg.steps, cfg.batch_size, cfg.lr, cfg.seed, "caption",
                 precision=cfg.precision)
    return TrainedCaptioner(model, vocab, losses)


@torch.no_grad()
def write_captions(trained: TrainedCaptioner, codes: torch.Tensor, batch_size: int = 256) -> list[str]:
    trained.model.eval()
    out = []
    for start in range(0, len(codes), batch_size):
        ids = trained.model.greedy(codes[start:start + batch_size], trained.vocab.bos, trained.vocab.eos)
        out += [trained.vocab.decode(row[1:].tolist()) for row in ids]
    return out


def captioning_scores(trained: TrainedCaptioner, held_out: CodeSet, meteor: bool) -> tuple[dict, list[dict]]:
    """(scores, one {key, generated, references} per image) on HELD_OUT's images that have
    reference captions."""
    keep = [i for i, lines in enumerate(held_out.captions) if lines]
    if not keep:
        raise UserError(f"{held_out.directory}: its samples carry no reference captions (txt)")
    generated = write_captions(trained, held_out.codes[keep])
    references = [held_out.captions[i] for i in keep]
    scores = caption_scores(generated, references, meteor)
    written = [{"key": held_out.keys[i], "generated": g, "references": r} for i, g, r in zip(keep, generated, references)]
    return {**scores, "images": len(keep)}, written
