"""Stratified bootstrap: pooled mean, coverage over many seeds, and why the strata matter."""

from __future__ import annotations

import numpy as np
import pytest

from at_probe.runs.stats import (
    MIN_DOCS_FOR_INTERVAL,
    Estimate,
    bootstrap_mean,
    comparison_label,
    describe,
    heldout_selected_gain,
    stratified_bootstrap_mean,
)


def test_pooled_mean_and_nans_dropped_only_when_asked_and_counted():
    groups = [np.array([1.0, 2.0, np.nan]), np.array([10.0])]
    with pytest.raises(ValueError, match="1 of the 3 values of group 0 are NaN"):
        stratified_bootstrap_mean(groups)
    est = stratified_bootstrap_mean(groups, missing="drop")
    assert est.mean == pytest.approx(13 / 3) and est.n == 3 and est.n_missing == 1
    assert est.ci95[0] <= est.mean <= est.ci95[1]
    assert est.to_dict()["n_missing"] == 1
    assert np.isnan(stratified_bootstrap_mean([np.array([])]).mean)


def test_bootstrap_mean_never_drops_a_nan_silently():
    values = np.array([1.0, np.nan, 3.0])
    with pytest.raises(ValueError, match="NaN.*missing='drop'"):
        bootstrap_mean(values)
    est = bootstrap_mean(values, missing="drop")
    assert (est.mean, est.n, est.n_missing) == (pytest.approx(2.0), 2, 1)
    assert est.to_dict() == {"mean": est.mean, "ci95": list(est.ci95), "n": 2, "n_missing": 1}
    clean = bootstrap_mean(np.array([1.0, 3.0]))  # nothing could be left out: the keys of old
    assert set(clean.to_dict()) == {"mean", "ci95", "n"} and clean.n_missing is None
    all_missing = bootstrap_mean(np.array([np.nan, np.nan]), missing="drop")
    assert all_missing.n == 0 and all_missing.n_missing == 2 and np.isnan(all_missing.mean)


@pytest.mark.parametrize("missing", ["raise", "drop"])
def test_infinite_values_are_refused_whatever_missing_says(missing):
    with pytest.raises(ValueError, match="infinite"):
        bootstrap_mean(np.array([1.0, np.inf]), missing=missing)
    with pytest.raises(ValueError, match="infinite"):
        stratified_bootstrap_mean([np.array([1.0]), np.array([-np.inf])], missing=missing)


def test_missing_takes_raise_or_drop_only():
    with pytest.raises(ValueError, match="unknown missing= policy 'ignore': expected one of 'raise', 'drop'"):
        bootstrap_mean(np.array([1.0]), missing="ignore")


def test_heldout_selection_refuses_a_nan_gain():
    """A NaN gain would win ``argmax`` (NumPy returns the first NaN's index)."""
    gains = np.tile([0.0, 1.0], (8, 1))
    gains[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        heldout_selected_gain(gains, repeats=10)


def test_coverage_of_the_pooled_mean_over_seeds():
    rng = np.random.default_rng(0)
    hits = 0
    for seed in range(200):  # two buckets with different means; the truth is their weighted mean
        a, b = rng.normal(0.0, 1.0, 40), rng.normal(1.0, 2.0, 60)
        lo, hi = stratified_bootstrap_mean([a, b], n_boot=1000, seed=seed).ci95
        hits += lo <= 0.6 <= hi
    assert 0.88 <= hits / 200 <= 0.99


def test_groups_can_count_alike_whatever_their_sizes():
    """``weights="groups"``: the mean of the group means, its interval around it, covering the
    truth over seeds; ``"observations"`` (the default) keeps the observation-weighted mean."""
    big, small = np.full(90, 1.0), np.zeros(10)
    assert stratified_bootstrap_mean([big, small]).mean == pytest.approx(0.9)
    assert stratified_bootstrap_mean([big, small], weights="groups").mean == pytest.approx(0.5)
    hits = 0
    for seed in range(100):
        rng = np.random.default_rng(seed)
        a, b = rng.normal(1.0, 1.0, 80), rng.normal(0.0, 1.0, 20)  # truth: (1 + 0) / 2
        lo, hi = stratified_bootstrap_mean([a, b], n_boot=1000, seed=seed, weights="groups").ci95
        assert lo < np.mean([a.mean(), b.mean()]) < hi
        hits += lo < 0.5 < hi
    assert hits >= 88
    with pytest.raises(ValueError, match="weights"):
        stratified_bootstrap_mean([big, small], weights="prompts")


def test_strata_keep_group_sizes_fixed():
    # two groups far apart with no spread inside: the pooled mean is known exactly given the
    # group sizes, so only an unstratified bootstrap (which redraws the mix) has a wide interval
    groups = [np.zeros(30), np.full(30, 10.0)]
    strat = stratified_bootstrap_mean(groups)
    assert strat.ci95 == pytest.approx((5.0, 5.0))
    assert bootstrap_mean(np.concatenate(groups)).ci95[1] - bootstrap_mean(np.concatenate(groups)).ci95[0] > 2


def _strict_json(value) -> str:
    """``value`` as standard JSON: a NaN (not JSON) fails."""
    import json

    return json.dumps(value, allow_nan=False)


@pytest.mark.parametrize(("estimate", "reason"), [
    (lambda: bootstrap_mean(np.array([])), "no documents"),
    (lambda: bootstrap_mean(np.array([np.nan, np.nan]), missing="drop"), "no documents (2 without a value)"),
    (lambda: stratified_bootstrap_mean([np.array([]), np.array([])]), "no documents"),
    (lambda: heldout_selected_gain(np.zeros((2, 3)), repeats=10),
     "2 documents; a held-out selection needs >= 4, two halves of 2"),
])
def test_an_undefined_estimate_says_why_in_json_and_in_words(estimate, reason):
    est = estimate()
    assert est.reason == reason
    data = est.to_dict()
    assert data["mean"] is None and data["ci95"] == [None, None] and data["reason"] == reason
    _strict_json(data)
    assert describe(est) == describe(data) == f"n/a ({reason})"


@pytest.mark.parametrize("estimate", [lambda: bootstrap_mean(np.array([0.25])),
                                      lambda: stratified_bootstrap_mean([np.array([0.25]), np.array([])])])
def test_one_document_has_a_mean_but_no_interval(estimate):
    est = estimate()
    assert (est.mean, est.n) == (0.25, 1) and np.isnan(est.ci95).all()
    assert est.to_dict() == {"mean": 0.25, "ci95": [None, None], "n": 1,
                             "reason": "1 document; an interval needs >= 2"}
    assert describe(est) == "+0.2500, interval n/a (1 document; an interval needs >= 2)"


def test_intervals_over_fewer_than_ten_documents_are_marked():
    assert MIN_DOCS_FOR_INTERVAL == 10
    rng = np.random.default_rng(0)
    few, enough = bootstrap_mean(rng.normal(size=9)), bootstrap_mean(rng.normal(size=10))
    assert few.warning == "9 documents < 10: unreliable"
    assert describe(few).endswith("] (9 documents < 10: unreliable)")
    assert enough.warning is None and describe(enough).endswith("]") and "nan" not in describe(enough)
    assert set(few.to_dict()) == {"mean", "ci95", "n"}  # the JSON keys of old: the report says it once
    flat = bootstrap_mean(np.full(12, 0.5))  # a setting that changes nothing
    assert describe(flat) == "+0.5000 [+0.5000, +0.5000] (no variance: the interval is a single point)"


def test_estimates_read_back_from_a_report_keep_their_reason():
    est = heldout_selected_gain(np.zeros((3, 2)), repeats=10)
    assert Estimate.from_dict(est.to_dict()).reason == est.reason
    # a report written before reasons existed: the reason follows from n
    assert describe({"mean": float("nan"), "ci95": [float("nan")] * 2, "n": 0}) == "n/a (no documents)"
    one = {"mean": 0.1, "ci95": [None, None], "n": 1}
    assert describe(one) == "+0.1000, interval n/a (1 document; an interval needs >= 2)"


def test_a_comparison_label_joins_its_two_names_once():
    a, b = "paper:alpha=1.0,beta=0.5,k=2", "placebo:alpha=1.0,beta=0.5,k=2,seed=0"
    assert comparison_label(a, b, sep=" vs ") == f"{a} vs {b}"
    assert comparison_label("paper", "baseline") == "paper - baseline"
