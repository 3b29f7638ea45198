"""Paired statistics with uncertainty: bootstrap means and held-out setting selection.

Every comparison in at_probe is paired (the same documents under two settings) and comes
with a percentile bootstrap 95% interval over documents. Choosing the best of many settings
is done on one half of the documents and scored on the other, never on the same documents.

No statistic drops a value silently: a NaN (an undefined per-document value, e.g. the mean
source position of a summary that copies nothing) is refused unless the caller passes
``missing="drop"``, and then the estimate counts what it left out (``Estimate.n_missing``).
Infinite values are always refused: they have no mean.

No statistic reports NaN without its reason: an estimate whose mean or interval is undefined
(no documents, one document, too few for a held-out selection) carries ``Estimate.reason``;
``to_dict`` writes such numbers as JSON null beside a ``reason`` field, and ``describe`` prints
``n/a (reason)`` in their place. An interval over fewer than ``MIN_DOCS_FOR_INTERVAL`` documents,
or one without variance, is printed with a warning (``Estimate.warning``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

from at_probe.runs.choices import check_choice

Missing = Literal["raise", "drop"]
"""What a statistic does with NaN values: refuse them (``"raise"``) or leave them out and count
them (``"drop"``)."""

MIN_DOCS_FOR_INTERVAL = 10
"""Fewest documents whose 95% interval reports print without a warning (ours). Below it a
percentile bootstrap is too narrow to trust: the resampled means take few distinct values (3
for 2 documents) and never leave the range of the data."""

MIN_DOCS_FOR_SELECTION = 4
"""Fewest documents for ``heldout_selected_gain``: two halves of at least 2 (ours)."""


@dataclass(frozen=True)
class Estimate:
    """A mean with its 95% interval and the number of paired observations.

    ``n_missing``: NaN observations left out (``missing="drop"``); None when the statistic was
    asked to refuse them, so that ``to_dict`` has the key exactly when values could be left out.
    ``reason``: why the mean or the interval is NaN (e.g. ``"1 document; an interval needs >=
    2"``); None when both are defined.
    """

    mean: float
    ci95: tuple[float, float]
    n: int
    n_missing: int | None = None
    reason: str | None = None

    @property
    def warning(self) -> str | None:
        """Why a defined interval should not be trusted as it stands: fewer than
        ``MIN_DOCS_FOR_INTERVAL`` documents, or no variance (a single point); else None."""
        lo, hi = self.ci95
        if not (np.isfinite(lo) and np.isfinite(hi)):
            return None
        notes = []
        if self.n < MIN_DOCS_FOR_INTERVAL:
            notes.append(f"{self.n} documents < {MIN_DOCS_FOR_INTERVAL}: unreliable")
        if lo == hi:
            notes.append("no variance: the interval is a single point")
        return "; ".join(notes) or None

    def to_dict(self) -> dict:
        """JSON-ready: ``mean``, ``ci95`` (null where undefined), ``n``, and ``n_missing`` and
        ``reason`` when set."""
        out = {"mean": _number(self.mean), "ci95": [_number(v) for v in self.ci95], "n": self.n}
        if self.n_missing is not None:
            out["n_missing"] = self.n_missing
        if self.reason is not None:
            out["reason"] = self.reason
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Estimate:
        """The inverse of ``to_dict`` (null is NaN), also for data without ``reason`` (a table's
        rows, a report written before it existed): an undefined number gets its reason from
        ``n`` as ``bootstrap_mean`` gives it."""
        mean = _nan_if_none(data["mean"])
        ci95 = tuple(_nan_if_none(v) for v in data["ci95"])
        reason, n = data.get("reason"), int(data["n"])
        if reason is None and not np.isfinite([mean, *ci95]).all():
            if n < 2:
                reason = _too_few(np.full(n, mean), data.get("n_missing")).reason
            else:
                reason = f"undefined over {n} documents"
        return cls(mean, ci95, n, data.get("n_missing"), reason)


def _number(value: float) -> float | None:
    """``value`` for JSON: None (null) for NaN, never a bare NaN token."""
    return None if np.isnan(value) else float(value)


def _nan_if_none(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def few_documents(n: int) -> str:
    """A report's warning, once, that its intervals are over ``n`` documents, fewer than
    ``MIN_DOCS_FOR_INTERVAL``."""
    return f"only {n} document{'s' * (n != 1)}; intervals need >= {MIN_DOCS_FOR_INTERVAL}"


def comparison_label(a: str, b: str, *, sep: str = " - ") -> str:
    """The name of the paired comparison ``a`` minus ``b`` in a report, its JSON key and printed
    label alike (formed here only, so a label is never joined twice). ``sep``: ``" - "`` in the
    role and condition reports, ``" vs "`` in ``xsum_report.py`` (its JSON keys)."""
    return f"{a}{sep}{b}"


def describe(estimate: Estimate | Mapping[str, Any], *, digits: int = 4, warn: bool = True) -> str:
    """One estimate as text, with its reason or warning in words, never a bare ``nan``.

    ``+0.0630 [+0.0109, +0.1150]``; ``+0.0630 [+0.0109, +0.1150] (2 documents < 10:
    unreliable)``; ``+0.0630, interval n/a (1 document; an interval needs >= 2)``;
    ``n/a (no documents)``. ``estimate``: an ``Estimate`` or its ``to_dict()`` (e.g. read back
    from a report); ``digits``: decimals; ``warn=False`` leaves ``Estimate.warning`` to the caller.
    """
    e = estimate if isinstance(estimate, Estimate) else Estimate.from_dict(estimate)
    if not np.isfinite(e.mean):
        return f"n/a ({e.reason})"
    mean = f"{e.mean:+.{digits}f}"
    lo, hi = e.ci95
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return f"{mean}, interval n/a ({e.reason})"
    text = f"{mean} [{lo:+.{digits}f}, {hi:+.{digits}f}]"
    return f"{text} ({e.warning})" if warn and e.warning else text


def _observations(values: np.ndarray, missing: Missing, what: str) -> tuple[np.ndarray, int | None]:
    """``values`` as a 1-d float array without its NaNs, and how many were left out (None
    unless ``missing="drop"``).

    Raises:
        ValueError: ``missing`` is neither ``"raise"`` nor ``"drop"``, an infinite value, or
            (``missing="raise"``) a NaN.
    """
    check_choice("missing= policy", missing, get_args(Missing))
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
        The estimate; with no observations a NaN mean and interval (``n = 0``), with one a NaN
        interval, each with its ``reason``.

    Raises:
        ValueError: an infinite value, or a NaN under ``missing="raise"``.
    """
    values, n_missing = _observations(values, missing, "values")
    if len(values) < 2:
        return _too_few(values, n_missing)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (n_boot, len(values)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return Estimate(float(values.mean()), (float(lo), float(hi)), len(values), n_missing)


def _too_few(values: np.ndarray, n_missing: int | None) -> Estimate:
    """The estimate of fewer than 2 observations: the mean of one (NaN of none), no interval."""
    nan = float("nan")
    if len(values) == 1:
        return Estimate(float(values[0]), (nan, nan), 1, n_missing, "1 document; an interval needs >= 2")
    left_out = f" ({n_missing} without a value)" if n_missing else ""
    return Estimate(nan, (nan, nan), 0, n_missing, f"no documents{left_out}")


Weights = Literal["observations", "groups"]
"""How ``stratified_bootstrap_mean`` pools groups: every observation alike, or every group alike."""


def _stratified_means(groups: list[np.ndarray], n_boot: int, seed: int, weights: Weights) -> tuple[float, np.ndarray]:
    """The pooled mean of non-empty ``groups`` and its ``n_boot`` resampled values (each group
    resampled within itself, keeping its size)."""
    if weights not in ("observations", "groups"):
        raise ValueError(f"weights must be 'observations' or 'groups', got {weights!r}")
    rng = np.random.default_rng(seed)
    resampled = [g[rng.integers(0, len(g), (n_boot, len(g)))] for g in groups]
    if weights == "groups":
        return float(np.mean([g.mean() for g in groups])), np.mean([r.mean(axis=1) for r in resampled], axis=0)
    n = sum(len(g) for g in groups)
    return float(np.concatenate(groups).mean()), sum(r.sum(axis=1) for r in resampled) / n


def stratified_bootstrap_mean(groups: list[np.ndarray], *, missing: Missing = "raise", n_boot: int = 2000,
                              seed: int = 0, weights: Weights = "observations") -> Estimate:
    """Pooled mean of several groups (e.g. length buckets), each resampled within itself.

    ``weights="observations"``: the mean over all observations (a group of 100 counts ten times
    one of 10); ``"groups"``: the mean of the groups' means (each group counts alike, whatever
    its size). The bootstrap keeps each group's size, so the interval does not mix the groups'
    variability with how many of each were drawn. ``missing`` and the errors are those of
    ``bootstrap_mean`` (``n_missing`` sums the groups'; empty groups are left out).
    """
    kept = [_observations(g, missing, f"values of group {i}") for i, g in enumerate(groups)]
    n_missing = None if missing == "raise" else sum(m for _, m in kept if m)
    groups = [g for g, _ in kept if len(g)]
    n = sum(len(g) for g in groups)
    if n < 2:
        return _too_few(np.concatenate([np.empty(0), *groups]), n_missing)
    mean, means = _stratified_means(groups, n_boot, seed, weights)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return Estimate(mean, (float(lo), float(hi)), n, n_missing)


def stratified_interval(groups: list[np.ndarray], level: float, *, n_boot: int = 2000,
                        seed: int = 0, weights: Weights = "observations") -> tuple[float, float]:
    """The percentile interval at ``level`` (e.g. 0.975) of ``stratified_bootstrap_mean``'s
    resampled means (the same resamples for the same ``seed`` and ``weights``); NaNs when fewer
    than 2 values.

    For a comparison whose interval is widened against multiple testing (Bonferroni: level
    ``1 - 0.05 / m`` for ``m`` comparisons). Values must be finite (no NaN policy here).
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    groups = [np.asarray(g, dtype=float).reshape(-1) for g in groups]
    groups = [g for g in groups if len(g)]
    if sum(len(g) for g in groups) < 2:
        return float("nan"), float("nan")
    if not all(np.isfinite(g).all() for g in groups):
        raise ValueError("stratified_interval needs finite values")
    _, means = _stratified_means(groups, n_boot, seed, weights)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


def heldout_selected_gain(gains: np.ndarray, *, repeats: int = 1000, seed: int = 0) -> Estimate:
    """Gain of the best setting chosen on half the documents and scored on the other half.

    ``gains`` is ``[documents, settings]`` (paired gain of each setting over the baseline,
    complete rows only). Each repeat first splits the documents at random into two halves,
    then resamples each half with replacement *within itself* (so a document, and every copy
    of it, stays on one side), picks the setting with the best mean gain on one half and
    scores it on the other (both ways, averaged). The mean and the 2.5/97.5 percentiles over
    repeats include split and sampling variability. Under pure noise (no setting better than
    the baseline) the expected value is 0: selection and scoring never share a document.
    With fewer than ``MIN_DOCS_FOR_SELECTION`` documents the estimate is NaN, with its reason.

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
    if n_docs < MIN_DOCS_FOR_SELECTION:
        return Estimate(float("nan"), (float("nan"), float("nan")), n_docs,
                        reason=f"{n_docs} document{'s' * (n_docs != 1)}; a held-out selection needs >= "
                               f"{MIN_DOCS_FOR_SELECTION}, two halves of 2")
    rng = np.random.default_rng(seed)
    out = np.empty(repeats)
    for r in range(repeats):
        order = rng.permutation(n_docs)
        halves = [gains[order[: n_docs // 2]], gains[order[n_docs // 2 :]]]
        a, b = (h[rng.integers(0, len(h), len(h))] for h in halves)
        out[r] = 0.5 * (b[:, a.mean(0).argmax()].mean() + a[:, b.mean(0).argmax()].mean())
    lo, hi = np.percentile(out, [2.5, 97.5])
    return Estimate(float(out.mean()), (float(lo), float(hi)), n_docs)
