"""Judge-free text measures of a generated summary (pure functions on strings).

ROUGE F1 (rouge-score, with stemming) against the reference; the share of repeated 4-grams
(degenerate repetition); the share of bigrams not found in the document (abstraction vs
copying); and where in the document the copied content comes from (relative position of the
output's trigrams that occur in the document).
"""

from __future__ import annotations

import re
from functools import lru_cache

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """Lower-cased word tokens."""
    return _WORD.findall(text.lower())


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


@lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)


def rouge(output: str, reference: str) -> dict[str, float]:
    """ROUGE-1/2/L F1 of ``output`` against ``reference``."""
    scores = _scorer().score(reference, output)
    return {k: float(v.fmeasure) for k, v in scores.items()}


def repetition_rate(output: str, n: int = 4) -> float:
    """Share of the output's ``n``-grams that repeat an earlier one (0 when it has none)."""
    grams = ngrams(words(output), n)
    return 0.0 if not grams else 1.0 - len(set(grams)) / len(grams)


def novel_bigram_share(output: str, document: str) -> float:
    """Share of the output's bigrams absent from the document (0 when it has none)."""
    grams = ngrams(words(output), 2)
    if not grams:
        return 0.0
    doc = set(ngrams(words(document), 2))
    return sum(g not in doc for g in grams) / len(grams)


def source_positions(output: str, document: str, n: int = 3) -> list[float]:
    """Relative positions (0 = start, 1 = end) in the document of the output's copied ``n``-grams.

    Each output ``n``-gram found in the document contributes the position of its first
    occurrence divided by the document's length in words.
    """
    doc = words(document)
    first: dict[tuple[str, ...], int] = {}
    for i, g in enumerate(ngrams(doc, n)):
        first.setdefault(g, i)
    length = max(1, len(doc))
    return [first[g] / length for g in ngrams(words(output), n) if g in first]
