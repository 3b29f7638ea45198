"""Stratified bootstrap: pooled mean, coverage over many seeds, and why the strata matter."""

from __future__ import annotations

import numpy as np
import pytest

from at_probe.stats import bootstrap_mean, stratified_bootstrap_mean


def test_pooled_mean_and_nans_dropped():
    est = stratified_bootstrap_mean([np.array([1.0, 2.0, np.nan]), np.array([10.0])])
    assert est.mean == pytest.approx(13 / 3) and est.n == 3
    assert est.ci95[0] <= est.mean <= est.ci95[1]
    assert np.isnan(stratified_bootstrap_mean([np.array([])]).mean)


def test_coverage_of_the_pooled_mean_over_seeds():
    rng = np.random.default_rng(0)
    hits = 0
    for seed in range(200):  # two buckets with different means; the truth is their weighted mean
        a, b = rng.normal(0.0, 1.0, 40), rng.normal(1.0, 2.0, 60)
        lo, hi = stratified_bootstrap_mean([a, b], n_boot=1000, seed=seed).ci95
        hits += lo <= 0.6 <= hi
    assert 0.88 <= hits / 200 <= 0.99


def test_strata_keep_group_sizes_fixed():
    # two groups far apart with no spread inside: the pooled mean is known exactly given the
    # group sizes, so only an unstratified bootstrap (which redraws the mix) has a wide interval
    groups = [np.zeros(30), np.full(30, 10.0)]
    strat = stratified_bootstrap_mean(groups)
    assert strat.ci95 == pytest.approx((5.0, 5.0))
    assert bootstrap_mean(np.concatenate(groups)).ci95[1] - bootstrap_mean(np.concatenate(groups)).ci95[0] > 2
