"""Paired statistics with uncertainty: bootstrap means and held-out setting selection.

Every comparison in at_probe is paired (the same documents under two settings) and comes
with a percentile bootstrap 95% interval over documents. Choosing the best of many settings
is done on one half of the documents and scored on the other, never on the same documents.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    """A mean with its 95% interval and the number of paired observations."""

    mean: float
    ci95: tuple[float, float]
    n: int

    def to_dict(self) -> dict:
        return {"mean": self.mean, "ci95": list(self.ci95), "n": self.n}


def bootstrap_mean(values: np.ndarray, *, n_boot: int = 2000, seed: int = 0) -> Estimate:
    """Mean of ``values`` with a percentile bootstrap 95% interval (resampling observations)."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return Estimate(float("nan"), (float("nan"), float("nan")), 0)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (n_boot, len(values)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return Estimate(float(values.mean()), (float(lo), float(hi)), len(values))


def stratified_bootstrap_mean(groups: list[np.ndarray], *, n_boot: int = 2000, seed: int = 0) -> Estimate:
    """Mean over all observations of several groups (e.g. length buckets), each resampled within itself.

    The pooled mean weights every observation equally; the bootstrap keeps each group's size,
    so the interval does not mix the groups' variability with how many of each were drawn.
    """
    groups = [np.asarray(g, dtype=float) for g in groups]
    groups = [g[~np.isnan(g)] for g in groups if len(g)]
    groups = [g for g in groups if len(g)]
    n = sum(len(g) for g in groups)
    if n == 0:
        return Estimate(float("nan"), (float("nan"), float("nan")), 0)
    rng = np.random.default_rng(seed)
    sums = sum(g[rng.integers(0, len(g), (n_boot, len(g)))].sum(axis=1) for g in groups)
    lo, hi = np.percentile(sums / n, [2.5, 97.5])
    return Estimate(float(np.concatenate(groups).mean()), (float(lo), float(hi)), n)


def heldout_selected_gain(gains: np.ndarray, *, repeats: int = 1000, seed: int = 0) -> Estimate:
    """Gain of the best setting chosen on half the documents and scored on the other half.

    ``gains`` is ``[documents, settings]`` (paired gain of each setting over the baseline,
    complete rows only). Each repeat first splits the documents at random into two halves,
    then resamples each half with replacement *within itself* (so a document, and every copy
    of it, stays on one side), picks the setting with the best mean gain on one half and
    scores it on the other (both ways, averaged). The mean and the 2.5/97.5 percentiles over
    repeats include split and sampling variability. Under pure noise (no setting better than
    the baseline) the expected value is 0: selection and scoring never share a document.
    """
    gains = np.asarray(gains, dtype=float)
    n_docs = gains.shape[0]
    if n_docs < 4:
        return Estimate(float("nan"), (float("nan"), float("nan")), n_docs)
    rng = np.random.default_rng(seed)
    out = np.empty(repeats)
    for r in range(repeats):
        order = rng.permutation(n_docs)
        halves = [gains[order[: n_docs // 2]], gains[order[n_docs // 2 :]]]
        a, b = (h[rng.integers(0, len(h), len(h))] for h in halves)
        out[r] = 0.5 * (b[:, a.mean(0).argmax()].mean() + a[:, b.mean(0).argmax()].mean())
    lo, hi = np.percentile(out, [2.5, 97.5])
    return Estimate(float(out.mean()), (float(lo), float(hi)), n_docs)
