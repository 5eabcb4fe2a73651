"""VQA from frozen codes: train VQAModel on the training set's questions, then accuracy
overall and per question type (attribute, count, existence, relation) on each held-out set.
An answer never seen in training counts as wrong (the classifier cannot give it)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from vqct.config.downstream import VQASettings
from vqct.downstream.code_features import CodeFeatures
from vqct.downstream.code_sets import CodeSet
from vqct.downstream.fit import fit
from vqct.downstream.image_reader import ImageReader
from vqct.downstream.vqa_model import VQAModel
from vqct.downstream.words import Vocabulary
from vqct.errors import UserError


@dataclass
class Questions:
    image: torch.Tensor  # (Q,) index of the question's image in its CodeSet
    words: torch.Tensor  # (Q, length) word ids
    answer: torch.Tensor  # (Q,) answer index, -1 when the answer is not among the known ones
    types: list[str]


def questions_of(codes: CodeSet, vocab: Vocabulary, answers: dict[str, int], length: int) -> Questions:
    rows = [(i, q) for i, qs in enumerate(codes.questions) for q in qs]
    if not rows:
        raise UserError(f"{codes.directory}: its samples carry no questions (VQA needs the scenes' json; "
                        "make them with `vqct data scenes`)")
    return Questions(torch.tensor([i for i, _ in rows]),
                     torch.tensor([vocab.encode(q["question"], length) for _, q in rows]),
                     torch.tensor([answers.get(q["answer"], -1) for _, q in rows]), [q["type"] for _, q in rows])


@dataclass
class TrainedVQA:
    model: VQAModel
    vocab: Vocabulary
    answers: list[str]
    losses: list[float]


def train_vqa(train: CodeSet, features: CodeFeatures, cfg: VQASettings) -> TrainedVQA:
    questions = [q for qs in train.questions for q in qs]
    vocab = Vocabulary.build(q["question"] for q in questions)
    answers = [a for a, _ in sorted(Counter(q["answer"] for q in questions).items(), key=lambda an: (-an[1], an[0]))]
    rows = questions_of(train, vocab, {a: i for i, a in enumerate(answers)}, cfg.question_length)
    reader = ImageReader(features, tuple(train.codes.shape[1:3]), cfg.width, cfg.patch)
    model = VQAModel(reader, len(vocab), len(answers), cfg.question_length,
                     cfg.width, cfg.layers, cfg.heads, cfg.dropout)

    def loss_of(batch: torch.Tensor) -> torch.Tensor:
        logits = model(train.codes[rows.image[batch]], rows.words[batch])
        return F.cross_entropy(logits, rows.answer[batch])

    losses = fit(model, loss_of, len(rows.answer), cfg.steps, cfg.batch_size, cfg.lr, cfg.seed, "vqa",
                 precision=cfg.precision)
    return TrainedVQA(model, vocab, answers, losses)


@torch.no_grad()
def vqa_accuracy(trained: TrainedVQA, held_out: CodeSet, length: int, batch_size: int = 256) -> dict:
    """{"accuracy", "accuracy_<type>" per type, "questions"} on HELD_OUT's questions."""
    rows = questions_of(held_out, trained.vocab, {a: i for i, a in enumerate(trained.answers)}, length)
    trained.model.eval()
    right = []
    for start in range(0, len(rows.answer), batch_size):
        part = slice(start, start + batch_size)
        guess = trained.model(held_out.codes[rows.image[part]], rows.words[part]).argmax(-1)
        right.append(guess == rows.answer[part])
    right = torch.cat(right).float()
    out = {"accuracy": right.mean().item(), "questions": len(right)}
    for kind in sorted(set(rows.types)):
        mask = torch.tensor([t == kind for t in rows.types])
        out[f"accuracy_{kind}"] = right[mask].mean().item()
    return out
