"""Corpus statistics: per-document rows, means and paired differences with intervals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from at_probe import corpus, ops
from at_probe.probe import FlowResult


def _result(profile: torch.Tensor, labels: list[str]) -> FlowResult:
    n_layers, n_heads, _ = profile.shape
    zeros = torch.zeros(n_layers, n_heads)
    return FlowResult(region_bounds=torch.arange(len(labels) + 1), region_labels=labels,
                      region_mass=torch.zeros(n_layers, n_heads, len(labels), len(labels)),
                      final_token_profile=profile, sink_mass=zeros, entropy=zeros, distance=zeros)


def test_document_rows_headline_is_early_document_mass_in_deep_layers():
    labels = ["sink", "template", "doc 01", "doc 02", "doc 03", "doc 04", "instruction"]
    profile = torch.zeros(4, 2, len(labels))
    profile[:, :, 2] = 0.1   # doc 01 in every layer
    profile[2:, 0, 3] = 0.4  # doc 02, head 0, deep layers only
    profile[:, :, 4] = 0.9   # doc 03: second half, not counted
    rows = corpus.document_rows(_result(profile, labels), doc_id="8", condition="paper")
    head = [r for r in rows if r["measure"] == "early_document_deep:final_token_profile"]
    assert len(head) == 1 and head[0]["value"] == pytest.approx(0.1 + 0.2)
    assert {r["measure"] for r in rows} >= {"final_token_profile", "sink_mass", "entropy", "distance"}
    with pytest.raises(ValueError, match="document regions"):
        corpus.document_rows(_result(profile[..., :2], ["sink", "1-9"]), doc_id="8", condition="paper")


def _frame(effect: float, n_docs: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for d in range(n_docs):
        base = rng.normal(0.5, 0.2)
        for cond, shift in (("baseline", 0.0), ("paper", effect)):
            rows.append({"doc_id": str(d), "condition": cond, "measure": "sink_mass", "layer": 0, "region": "",
                         "value": base + shift + rng.normal(0, 0.01)})
    return pd.DataFrame(rows)


def test_summarise_pairs_documents_and_finds_a_real_shift_but_not_noise():
    """Paired by document: a 0.02 shift under document-level spread of 0.2 is found; a null
    effect excludes 0 in about 5% of seeds, not more."""
    found = corpus.summarise(_frame(0.02, 30, 0))
    diff = found[found.kind == "difference"].iloc[0]
    assert diff["condition"] == "paper - baseline" and diff.excludes_zero and diff.lo > 0.01
    false_alarms = sum(
        bool(corpus.summarise(_frame(0.0, 30, seed), n_boot=500).query("kind == 'difference'").excludes_zero.iloc[0])
        for seed in range(40))
    assert false_alarms <= 6


def test_summarise_drops_documents_missing_a_condition():
    frame = _frame(0.1, 10, 1)
    frame = pd.concat([frame, pd.DataFrame([{"doc_id": "99", "condition": "baseline", "measure": "sink_mass",
                                             "layer": 0, "region": "", "value": 100.0}])])
    means = corpus.summarise(frame).query("kind == 'mean' and condition == 'baseline'")
    assert means["n"].iloc[0] == 10 and means["mean"].iloc[0] < 1
    with pytest.raises(ValueError, match="baseline"):
        corpus.summarise(frame[frame.condition == "paper"])


def test_value_norms_follow_grouped_query_heads():
    gen = torch.Generator().manual_seed(0)
    values, w_o = torch.randn(7, 2, 3, generator=gen), torch.randn(4, 3, 5, generator=gen)
    norms = ops.value_norms(values, w_o)
    expected = torch.stack([(values[:, h // 2, :] @ w_o[h]).norm(dim=-1) for h in range(4)])
    torch.testing.assert_close(norms, expected)
