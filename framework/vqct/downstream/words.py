"""A word vocabulary for the downstream models' captions, questions and answers.

Why by hand: the captions and questions are short, lower-case and built from a few hundred
words (the scenes' grammar, CUB's and COCO's captions once lower-cased); a subword tokenizer
would only lengthen sequences the small captioner has to produce word by word, and the caption
metrics score words.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)


def words_of(text: str) -> list[str]:
    """Lower-case words and numbers; punctuation dropped (the caption metrics' references are
    normalised the same way, so a caption is never marked down for a colon)."""
    return re.findall(r"[a-z0-9]+", text.lower())


class Vocabulary:
    def __init__(self, words: Iterable[str]):
        self.words = list(SPECIALS) + [w for w in words if w not in SPECIALS]
        self.index = {w: i for i, w in enumerate(self.words)}
        self.pad, self.bos, self.eos, self.unk = (self.index[s] for s in SPECIALS)

    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 1) -> "Vocabulary":
        """Words of TEXTS seen at least MIN_COUNT times, most frequent first (ties by spelling)."""
        counts = Counter(w for text in texts for w in words_of(text))
        return cls(w for w, n in sorted(counts.items(), key=lambda wn: (-wn[1], wn[0])) if n >= min_count)

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, text: str, length: int, ends: bool = False) -> list[int]:
        """TEXT as LENGTH ids: (<bos>) words (<eos>), cut to LENGTH, padded with <pad>."""
        ids = [self.index.get(w, self.unk) for w in words_of(text)]
        if ends:
            ids = [self.bos] + ids + [self.eos]
        ids = ids[:length]
        return ids + [self.pad] * (length - len(ids))

    def decode(self, ids: Iterable[int]) -> str:
        """Words up to the first <eos>, specials left out."""
        out = []
        for i in ids:
            if i == self.eos:
                break
            if i >= len(SPECIALS):
                out.append(self.words[i])
        return " ".join(out)
