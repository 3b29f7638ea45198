"""Paired statistics with uncertainty: bootstrap means and held-out setting selection.

Every comparison in at_probe is paired (the same documents under two settings) and comes
with a percentile bootstrap 95% interval over documents. Choosing the best of many settings
is done on one half of the documents and scored on the other, never on the same documents.

No statistic drops a value silently: a NaN (an undefined per-document value, e.g. the mean
source position of a summary that copies nothing) is refused unless the caller passes
``missing="drop"``, and then the estimate counts what it left out (``Estimate.n_missing``).
Infinite values are always refused: they have no mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Missing = Literal["raise", "drop"]
"""What a statistic does with NaN values: refuse them (``"raise"``) or leave them out and count
them (``"drop"``)."""


@dataclass(frozen=True)
class Estimate:
    """A mean with its 95% interval and the number of paired observations.

    ``n_missing``: NaN observations left out (``missing="drop"``); None when the statistic was
    asked to refuse them, so that ``to_dict`` has the key exactly when values could be left out.
    """

    mean: float
    ci95: tuple[float, float]
    n: int
    n_missing: int | None = None

    def to_dict(self) -> dict:
        out = {"mean": self.mean, "ci95": list(self.ci95), "n": self.n}
        if self.n_missing is not None:
            out["n_missing"] = self.n_missing
        return out


def _observations(values: np.ndarray, missing: Missing, what: str) -> tuple[np.ndarray, int | None]:
    """``values`` as a 1-d float array without its NaNs, and how many were left out (None
    unless ``missing="drop"``).

    Raises:
        ValueError: ``missing`` is neither ``"raise"`` nor ``"drop"``, an infinite value, or
            (``missing="raise"``) a NaN.
    """
    if missing not in ("raise", "drop"):
        raise ValueError(f"missing must be 'raise' or 'drop', got {missing!r}")
    values = np.asarray(values, dtype=float).reshape(-1)
    nan = np.isnan(values)
    if np.isinf(values).any():
        raise ValueError(f"{int(np.isinf(values).sum())} of the {len(values)} {what} are infinite: they have "
                         "no mean")
    if missing == "raise":
        if nan.any():
            raise ValueError(f"{int(nan.sum())} of the {len(values)} {what} are NaN: pass missing='drop' to "
                             "leave them out (counted in n_missing)")
        return values, None
    return values[~nan], int(nan.sum())


def bootstrap_mean(values: np.ndarray, *, missing: Missing = "raise", n_boot: int = 2000,
                   seed: int = 0) -> Estimate:
    """Mean of ``values`` with a percentile bootstrap 95% interval (resampling observations).

    Args:
        values: the observations (any shape, flattened).
        missing: ``"raise"``: a NaN is an error; ``"drop"``: NaNs are left out and counted in
            ``n_missing``.
        n_boot: bootstrap resamples; seed: their generator's seed.

    Returns:
        The estimate; with no observations, a NaN mean and interval and ``n = 0``.

    Raises:
        ValueError: an infinite value, or a NaN under ``missing="raise"``.
    """
    values, n_missing = _observations(values, missing, "values")
    if len(values) == 0:
        return Estimate(float("nan"), (float("nan"), float("nan")), 0, n_missing)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (n_boot, len(values)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return Estimate(float(values.mean()), (float(lo), float(hi)), len(values), n_missing)


def stratified_bootstrap_mean(groups: list[np.ndarray], *, missing: Missing = "raise", n_boot: int = 2000,
                              seed: int = 0) -> Estimate:
    """Mean over all observations of several groups (e.g. length buckets), each resampled within itself.

    The pooled mean weights every observation equally; the bootstrap keeps each group's size,
    so the interval does not mix the groups' variability with how many of each were drawn.
    ``missing`` and the errors are those of ``bootstrap_mean`` (``n_missing`` sums the groups').
    """
    kept = [_observations(g, missing, f"values of group {i}") for i, g in enumerate(groups)]
    n_missing = None if missing == "raise" else sum(m for _, m in kept if m)
    groups = [g for g, _ in kept if len(g)]
    n = sum(len(g) for g in groups)
    if n == 0:
        return Estimate(float("nan"), (float("nan"), float("nan")), 0, n_missing)
    rng = np.random.default_rng(seed)
    sums = sum(g[rng.integers(0, len(g), (n_boot, len(g)))].sum(axis=1) for g in groups)
    lo, hi = np.percentile(sums / n, [2.5, 97.5])
    return Estimate(float(np.concatenate(groups).mean()), (float(lo), float(hi)), n, n_missing)


def heldout_selected_gain(gains: np.ndarray, *, repeats: int = 1000, seed: int = 0) -> Estimate:
    """Gain of the best setting chosen on half the documents and scored on the other half.

    ``gains`` is ``[documents, settings]`` (paired gain of each setting over the baseline,
    complete rows only). Each repeat first splits the documents at random into two halves,
    then resamples each half with replacement *within itself* (so a document, and every copy
    of it, stays on one side), picks the setting with the best mean gain on one half and
    scores it on the other (both ways, averaged). The mean and the 2.5/97.5 percentiles over
    repeats include split and sampling variability. Under pure noise (no setting better than
    the baseline) the expected value is 0: selection and scoring never share a document.

    Raises:
        ValueError: ``gains`` is not 2-d or holds a NaN or infinite value (a NaN would win
            ``argmax``; keep complete rows before calling).
    """
    gains = np.asarray(gains, dtype=float)
    if gains.ndim != 2:
        raise ValueError(f"gains must be [documents, settings], got shape {gains.shape}")
    if not np.isfinite(gains).all():
        raise ValueError(f"gains hold {int((~np.isfinite(gains)).sum())} NaN or infinite value(s): keep the "
                         "complete rows (and count the others) before selecting")
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
