"""BLEU-4, ROUGE-L, CIDEr-D and METEOR of generated captions against reference captions, by
pycocoevalcap (the coco-caption code every captioning paper reports; its Cider is CIDEr-D).

Captions and references are normalised by words.words_of instead of coco-caption's PTB
tokenizer (a Java program): the scenes' captions are lower-case words already, and the same
normalisation on both sides keeps the scores comparable. METEOR runs only where Java does.
"""

from __future__ import annotations

import shutil

from vqct.downstream.words import words_of


def _normalised(captions: list[list[str]]) -> dict[int, list[str]]:
    return {i: [" ".join(words_of(c)) or "<empty>" for c in lines] for i, lines in enumerate(captions)}


def caption_scores(generated: list[str], references: list[list[str]], meteor: bool = True) -> dict:
    """Corpus scores of GENERATED[i] against REFERENCES[i] (several lines each)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if len(generated) != len(references) or not generated:
        raise ValueError("one generated caption per image, and at least one image")
    refs, hyps = _normalised(references), _normalised([[g] for g in generated])
    bleu, _ = Bleu(4).compute_score(refs, hyps, verbose=0)
    scores = {"bleu4": float(bleu[3]), "rouge_l": float(Rouge().compute_score(refs, hyps)[0]),
              "cider_d": float(Cider().compute_score(refs, hyps)[0])}
    if meteor and shutil.which("java"):
        from pycocoevalcap.meteor.meteor import Meteor

        scorer = Meteor()
        try:
            scores["meteor"] = float(scorer.compute_score(refs, hyps)[0])
        finally:  # the scorer leaves its Java process running; end it here
            scorer.meteor_p.stdin.close()
            scorer.meteor_p.kill()
            scorer.meteor_p.wait()
    else:
        scores["meteor"] = "skipped: no java on PATH (METEOR's scorer is a Java program)"
    return scores
