"""Judge-free text measures of a generated summary (pure functions on strings).

ROUGE F1 (rouge-score, with stemming) against the reference; the share of repeated 4-grams
(degenerate repetition); the share of bigrams not found in the document (abstraction vs
copying); and where in the document the copied content comes from (relative position of the
output's trigrams that occur in the document).

ROUGE's tokenizer (``rouge(..., tokenizer=...)``):

* ``"default"``: rouge-score's own, as in the literature (lower-cased ASCII letters and
  digits; Porter stemming of words longer than 3 characters). It drops every other
  character: Greek, Russian or Chinese text has no tokens at all (ROUGE 0 even against
  itself) and ``"café"`` counts as ``"caf"``. Use it for numbers comparable with published
  ROUGE on English.
* ``"unicode"``: the text NFKC-normalised and case-folded; a token is a run of letters, marks
  and digits of any script, except that each character of a script written without spaces
  between words (``UNSPACED_SCRIPTS``: Han, Hiragana, Katakana, Thai, Lao, Khmer, Myanmar)
  is a token of its own, with its combining marks (character-level ROUGE, as usual for
  Chinese and Japanese). Words of ASCII letters and digits are stemmed as by the default,
  so on ASCII text both tokenizers give the same scores.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import Any, Literal

from at_probe.runs.choices import check_choice

_WORD = re.compile(r"\w+")

RougeTokenizer = Literal["default", "unicode"]
ROUGE_TOKENIZERS: tuple[str, ...] = ("default", "unicode")
"""The tokenizers ``rouge`` offers (see the module's notes)."""

UNSPACED_SCRIPTS: tuple[str, ...] = ("Han", "Hiragana", "Katakana", "Thai", "Lao", "Khmer", "Myanmar")
"""Scripts whose characters are one token each in the ``"unicode"`` ROUGE tokenizer."""


def words(text: str) -> list[str]:
    """Lower-cased word tokens."""
    return _WORD.findall(text.lower())


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


@lru_cache(maxsize=1)
def _unicode_token():
    import regex  # the Unicode script and category classes that ``re`` lacks

    unspaced = "".join(rf"\p{{{s}}}" for s in UNSPACED_SCRIPTS)
    return regex.compile(rf"[{unspaced}]\p{{M}}*|(?:(?![{unspaced}])[\p{{L}}\p{{M}}\p{{N}}])+")


def unicode_tokens(text: str) -> list[str]:
    """The ``"unicode"`` ROUGE tokenizer's tokens of ``text``, before stemming (see the
    module's notes): e.g. ``"The Café, 中文!"`` -> ``["the", "café", "中", "文"]``."""
    return _unicode_token().findall(unicodedata.normalize("NFKC", text).casefold())


@lru_cache(maxsize=None)
def _scorer(tokenizer: RougeTokenizer):
    from rouge_score import rouge_scorer, tokenizers

    if tokenizer == "default":
        return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    default = tokenizers.DefaultTokenizer(use_stemmer=True)

    class Unicode(tokenizers.Tokenizer):
        def tokenize(self, text: str) -> list[str]:  # ASCII words stemmed exactly as the default does
            return [t for w in unicode_tokens(text)
                    for t in (default.tokenize(w) if w.isascii() else [w])]

    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=Unicode())


def rouge(output: str, reference: str, *, tokenizer: RougeTokenizer = "default") -> dict[str, float]:
    """ROUGE-1/2/L F1 of ``output`` against ``reference`` (``rouge1``, ``rouge2``, ``rougeL``).

    Args:
        tokenizer: ``"default"`` (rouge-score's, ASCII only, comparable with the literature)
            or ``"unicode"`` (every script; see the module's notes).

    Raises:
        ValueError: an unknown ``tokenizer``.
    """
    check_choice("ROUGE tokenizer", tokenizer, ROUGE_TOKENIZERS)
    scores = _scorer(tokenizer).score(reference, output)
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



OPTIONAL_METRICS: tuple[str, ...] = ("source_position_mean",)
"""Metrics of ``score_summary`` that are undefined (None) for some outputs: the mean source
position when the output copies no n-gram of the document. Reports leave those documents out of
these metrics' estimates and count them (``missing="drop"``, ``n_missing``); every other metric
must be defined for every document."""

PRIMARY_METRIC = "semantic_similarity"
"""The XSum experiment's primary metric, declared in the README before the results were seen:
cosine similarity of a summary to its reference (``at_probe.xsum.semantic``). ``xsum_eval.py`` does
not compute it: ``xsum_experiment.py`` scores a run's outputs into the run's
``at_probe.xsum.semantic.SCORES_FILE``, which every report of the run reads and lists first."""


def score_summary(output: str, record: dict[str, Any], *, rouge_tokenizer: str = "default") -> dict[str, Any]:
    """Judge-free measures of a summary against its release record (reference and document);
    ``rouge_tokenizer`` as ``rouge``'s ``tokenizer`` (``"default"``: ASCII only)."""
    positions = source_positions(output, record["document"])
    return {
        **rouge(output, record["summary"], tokenizer=rouge_tokenizer),
        "repetition_4gram": repetition_rate(output),
        "novel_bigrams": novel_bigram_share(output, record["document"]),
        "source_position_mean": sum(positions) / len(positions) if positions else None,
        "source_ngrams_matched": len(positions),
    }
