"""Flow over many documents: per-document measures, means with intervals, paired differences.

One document cannot carry a claim. For each document and condition the probe's result is
reduced to head-averaged measures (``document_rows``); regions are fractions of the document
(``doc 01`` .. ``doc R`` split each document evenly), so documents of different lengths align.
``summarise`` then gives, per condition, measure, layer and region, the mean over documents
with a percentile bootstrap 95% interval, and the paired difference from the baseline (the
same documents) with its interval. Documents are the unit of resampling.

The headline measure (``EARLY_DEEP``, one number per document) answers the question the paper
raises: the final token's mass on the first half of the document in the deep layers (the
second half of the stack), raw and value-weighted; ``paired_contrast`` compares it between two
conditions, e.g. paper minus placebo. ``early_document_attribution`` is the causal map's
counterpart: per band of layers, the estimated change of the reference's NLL if that first half
of the document were knocked out, with the same contrasts.

Example:
    >>> rows = document_rows(result, doc_id="37131104", condition="paper")
    >>> table = summarise(pd.DataFrame(all_rows))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from at_probe.flow.probe import FlowResult
from at_probe.runs.choices import check_choice
from at_probe.runs.stats import (
    MIN_DOCS_FOR_INTERVAL,
    Estimate,
    bootstrap_mean,
    comparison_label,
    describe,
    few_documents,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pandas as pd

    from at_probe.runs.sweep import FunctionWorker

PROFILES = ("final_token_profile", "final_token_value_profile")
"""Per-region measures of the final prompt token: attention mass, value-weighted norm."""

LAYER_MEASURES = ("sink_mass", "entropy", "distance")
"""Per-layer measures (means over heads and query rows)."""

EARLY_DEEP = "early_document_deep"
"""Headline measure: final-token mass on the first half of the document regions, averaged over
the deep layers (``L // 2 .. L - 1``) and heads (for each profile)."""

ATTRIBUTION = "attribution_nll"
"""Measure of the causal map's rows (``attribution_rows``): first-order change of the
reference summary's NLL (nats/token) if a region were knocked out in a band of layers."""


def document_rows(result: FlowResult, *, doc_id: str, condition: str) -> list[dict[str, Any]]:
    """Head-averaged measures of one document under one condition as tidy rows.

    Rows have ``doc_id, condition, measure, layer, region, value``; ``region`` is ``""`` for
    per-layer measures and ``layer`` is -1 for the headline measure.
    """
    rows: list[dict[str, Any]] = []
    base = {"doc_id": doc_id, "condition": condition}
    for name in PROFILES:
        profile = getattr(result, name)
        if profile is None:
            continue
        mean = profile.float().mean(dim=1)  # [layer, region]
        for l in range(mean.shape[0]):
            for r, label in enumerate(result.region_labels):
                rows.append({**base, "measure": name, "layer": l, "region": label, "value": float(mean[l, r])})
        early = _early_document(result.region_labels)
        deep = mean[mean.shape[0] // 2 :, early].sum(-1).mean()
        rows.append({**base, "measure": f"{EARLY_DEEP}:{name}", "layer": -1, "region": "", "value": float(deep)})
    for name in LAYER_MEASURES:
        per_layer = getattr(result, name).float().mean(dim=1)
        rows.extend({**base, "measure": name, "layer": l, "region": "", "value": float(v)}
                    for l, v in enumerate(per_layer.tolist()))
    return rows


def attribution_rows(estimate: Any, *, doc_id: str, condition: str) -> list[dict[str, Any]]:
    """An ``attribution_sweep`` result as tidy rows: measure ``attribution_nll`` (first-order
    change of the reference's NLL, nats/token, if the region were knocked out in the band),
    ``layer`` the band's first layer, ``region`` the region's label."""
    base = {"doc_id": doc_id, "condition": condition, "measure": ATTRIBUTION}
    return [{**base, "layer": start, "region": label, "value": float(estimate.nll_delta[i, j])}
            for i, (start, _) in enumerate(estimate.bands)
            for j, label in enumerate(estimate.region_labels)]


def pack_rows(rows: Sequence[dict[str, Any]]) -> list[list[Any]]:
    """One document's tidy rows as series, the layout of a ``docs.jsonl`` record (``series``):
    one ``[condition, measure, region, layers, values]`` per (condition, measure, region) in
    order of first appearance, so that the names are written once per series rather than once
    per number (a run of 19 conditions on SmolLM2 is 6x smaller); values are kept exactly.
    ``unpack_record`` gives the rows back, grouped by series (``doc_id`` is held once, by the record)."""
    series: dict[tuple[str, str, str], list[list[Any]]] = {}
    for row in rows:
        layers, values = series.setdefault((row["condition"], row["measure"], row["region"]), [[], []])
        layers.append(row["layer"])
        values.append(row["value"])
    return [[*key, layers, values] for key, (layers, values) in series.items()]


def unpack_record(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The tidy rows (``doc_id, condition, measure, layer, region, value``) of one ``docs.jsonl``
    record: its ``series`` (``pack_rows``), or the ``rows`` of a run written before series existed.

    Raises:
        KeyError: the record has neither.
        ValueError: a series whose layers and values differ in number, or not of five entries.
    """
    if "rows" in record:
        return record["rows"]
    doc_id = record["doc_id"]
    return [{"doc_id": doc_id, "condition": condition, "measure": measure, "layer": layer, "region": region,
             "value": value}
            for condition, measure, region, layers, values in record["series"]
            for layer, value in zip(layers, values, strict=True)]


def _early_document(labels: list[str]) -> list[int]:
    """Indices of the first half of the ``doc NN`` regions (the first one if there is only one)."""
    doc = [i for i, label in enumerate(labels) if label.startswith("doc ")]
    if not doc:
        raise ValueError(f"no document regions among {labels}: build the probe with document=...")
    return doc[: max(1, len(doc) // 2)]


def summarise(frame: pd.DataFrame, *, baseline: str = "baseline", n_boot: int = 2000,
              seed: int = 0) -> pd.DataFrame:
    """Means over documents and paired differences from ``baseline``, each with a 95% interval.

    Only documents measured under every condition are used (every measure is defined for every
    document, so a NaN value is an error, never left out). Returns rows with ``kind``
    (``"mean"`` or ``"difference"``), ``condition`` (for differences ``"<c> - <baseline>"``),
    ``measure, layer, region, mean, lo, hi, n`` and ``excludes_zero`` (differences only); ``lo``
    and ``hi`` are NaN over a single document (``at_probe.runs.stats.bootstrap_mean``).

    Raises:
        ValueError: ``baseline`` is not among the conditions, or a NaN or infinite value.
    """
    import pandas as pd

    conditions = list(dict.fromkeys(frame["condition"]))
    check_choice("baseline condition", baseline, conditions)
    complete = frame.groupby("doc_id")["condition"].nunique() == len(conditions)
    frame = frame[frame.doc_id.isin(complete[complete].index)]
    wide = frame.pivot_table(index=["measure", "layer", "region", "doc_id"], columns="condition",
                             values="value", aggfunc="first")
    out = []
    for (measure, layer, region), cell in wide.groupby(level=[0, 1, 2], sort=False):
        for cond in conditions:
            est = bootstrap_mean(cell[cond].to_numpy(), missing="raise", n_boot=n_boot, seed=seed)
            out.append({"kind": "mean", "condition": cond, "measure": measure, "layer": layer, "region": region,
                        "mean": est.mean, "lo": est.ci95[0], "hi": est.ci95[1], "n": est.n})
            if cond == baseline:
                continue
            est = bootstrap_mean((cell[cond] - cell[baseline]).to_numpy(), missing="raise", n_boot=n_boot,
                                 seed=seed)
            out.append({"kind": "difference", "condition": comparison_label(cond, baseline),
                        "measure": measure, "layer": layer, "region": region, "mean": est.mean,
                        "lo": est.ci95[0], "hi": est.ci95[1], "n": est.n,
                        "excludes_zero": est.ci95[0] > 0 or est.ci95[1] < 0})
    return pd.DataFrame(out)


def paired_contrast(frame: pd.DataFrame, measure: str, a: str, b: str, *, n_boot: int = 2000,
                    seed: int = 0) -> dict[str, Any]:
    """Mean over documents of ``a - b`` for one scalar ``measure`` (e.g. the headline), with its
    95% bootstrap interval, on the documents measured under both; ``n_missing`` counts the
    documents measured under only one of them (left out).

    Raises:
        UnknownChoiceError: a ``measure`` not in ``frame``, or a condition without that measure.
    """
    check_choice("measure", measure, list(dict.fromkeys(frame["measure"])))
    rows = frame[frame.measure == measure]
    for condition in (a, b):
        check_choice(f"condition (of {measure})", condition, list(dict.fromkeys(rows["condition"])))
    part = rows.pivot_table(index="doc_id", columns="condition", values="value", aggfunc="first")
    diff = (part[a] - part[b]).to_numpy(dtype=float)
    return {"contrast": comparison_label(a, b), "measure": measure,
            **bootstrap_mean(diff, missing="drop", n_boot=n_boot, seed=seed).to_dict()}


def early_document_attribution(frame: pd.DataFrame, contrasts: Sequence[tuple[str, str]], *, n_layers: int,
                               n_boot: int = 2000, seed: int = 0) -> dict[str, Any] | None:
    """The causal map's headline: what knocking out the early document would do, per band.

    Per document, condition and band of layers, the sum of the ``ATTRIBUTION`` estimates of the
    early-document regions (the first half of the ``doc NN`` regions, as in ``EARLY_DEEP``), in
    nats/token of the reference summary's NLL. Each region's first-order estimate rescales the
    other keys on its own, so the sum approximates the estimate of knocking the regions out
    together; it is not that estimate.

    Args:
        frame: tidy rows (``document_rows``, ``attribution_rows``) of any measures.
        contrasts: ``(a, b)`` condition pairs, each reported as the paired ``a - b``; pairs with
            a condition that has no causal-map rows are left out.
        n_layers: the model's layers (the last band ends at ``n_layers - 1``).

    Returns:
        None without ``ATTRIBUTION`` rows; else ``{"measure", "unit", "regions", "bands"}``, each
        band (in layer order) with ``layers`` (``[first, last]``), ``means`` (per condition: the
        mean over its documents with a 95% bootstrap interval) and ``contrasts`` (per pair: the
        paired mean of ``a - b`` over the documents measured under both, with its interval;
        ``n_missing`` counts the documents left out).

    Raises:
        ValueError: a (document, condition, band) without exactly one row per early region, a
            band starting at or past ``n_layers``, or an infinite value.
    """
    part = frame[frame.measure == ATTRIBUTION]
    if part.empty:
        return None
    labels = list(dict.fromkeys(part.region))
    early = [labels[i] for i in _early_document(labels)]
    rows = part[part.region.isin(early)]
    keys = ["layer", "doc_id", "condition"]
    per_cell = rows.groupby(keys).region.agg(["size", "nunique"])
    wrong = per_cell[(per_cell["size"] != len(early)) | (per_cell["nunique"] != len(early))]
    if len(wrong):  # a missing or repeated region would shift the sum silently
        layer, doc_id, condition = wrong.index[0]
        raise ValueError(f"document {doc_id} under {condition}, band from layer {layer}: expected one row "
                         f"for each of {early}, got {int(wrong['size'].iloc[0])}")
    sums = rows.pivot_table(index=["layer", "doc_id"], columns="condition", values="value", aggfunc="sum")
    starts = sorted(int(layer) for layer in sums.index.get_level_values("layer").unique())
    if starts[-1] >= n_layers:
        raise ValueError(f"a band starts at layer {starts[-1]}, but the model has {n_layers} layers")
    conditions = list(dict.fromkeys(rows.condition))
    pairs = [(a, b) for a, b in contrasts if a in conditions and b in conditions]

    def estimate(values: pd.Series) -> dict[str, Any]:
        values = values.to_numpy(dtype=float)
        return bootstrap_mean(values, missing="drop", n_boot=n_boot, seed=seed).to_dict()

    bands = []
    for start, end in zip(starts, [*(s - 1 for s in starts[1:]), n_layers - 1]):
        band = sums.loc[start]  # [document, condition]; NaN where a document lacks the condition
        bands.append({"layers": [start, end], "means": {c: estimate(band[c]) for c in conditions},
                      "contrasts": [{"contrast": comparison_label(a, b), **estimate(band[a] - band[b])}
                                    for a, b in pairs]})
    return {"measure": ATTRIBUTION, "unit": "nats/token", "regions": early, "bands": bands}


def plain_words(summary: pd.DataFrame, *, limit: int = 4) -> list[str]:
    """One sentence per condition and measure: where the paired difference's interval excludes 0;
    and a warning when the intervals are over fewer than ``MIN_DOCS_FOR_INTERVAL`` documents."""
    lines = []
    diffs = summary[summary.kind == "difference"]
    for (cond, measure), part in diffs.groupby(["condition", "measure"], sort=False):
        if measure.startswith(EARLY_DEEP):
            continue
        hits = part[part.excludes_zero.astype(bool)]
        if hits.empty:
            lines.append(f"{cond}, {measure}: no difference excludes 0 ({len(part)} cells).")
            continue
        top = hits.reindex(hits["mean"].abs().sort_values(ascending=False).index)[:limit]
        cells = "; ".join(f"layer {int(r.layer)}{' ' + r.region if r.region else ''} {r['mean']:+.3g} "
                          f"[{r.lo:+.3g}, {r.hi:+.3g}]" for _, r in top.iterrows())
        lines.append(f"{cond}, {measure}: {len(hits)} of {len(part)} cells exclude 0; largest: {cells}.")
    if lines:
        lines.append("Intervals are per cell (95%, bootstrap over documents), not corrected for the number of "
                     "cells: about 1 in 20 null cells excludes 0 by chance.")
        n = int(diffs["n"].min())
        if n < 2:
            lines.append(f"Warning: only {n} document{'s' * (n != 1)}: these cells have no interval.")
        elif n < MIN_DOCS_FOR_INTERVAL:
            lines.append(f"Warning: {few_documents(n)}: these intervals are unreliable.")
    return lines


def interval_words(estimate: dict[str, Any]) -> str:
    """``+0.0120 [+0.0040, +0.0200] (excludes 0, n=20)`` style text for one estimate
    (``Estimate.to_dict()``), with ``at_probe.runs.stats.describe``'s warning (fewer than
    ``MIN_DOCS_FOR_INTERVAL`` documents) or reason (``n/a (no documents)``) in words."""
    e = Estimate.from_dict(estimate)
    text = describe(e, warn=False)
    if not (np.isfinite(e.ci95[0]) and np.isfinite(e.ci95[1])):
        return text
    verdict = "excludes 0" if e.ci95[0] > 0 or e.ci95[1] < 0 else "includes 0"
    return f"{text} ({verdict}, n={e.n}" + (f"; {e.warning})" if e.warning else ")")


def document_prompt(tokenizer: Any, record: dict[str, Any], n_ctx: int, max_tokens: int | None,
                    with_reference: bool) -> tuple[Any, list[int]]:
    """A corpus document's prompt (cut to ``max_tokens``, and to leave room for the reference
    when ``with_reference``: the causal map scores it) and the reference's ids (``[]`` without).

    Raises:
        ValueError: no room for the document (``build_prompt``).
    """
    from at_probe.models.prompts import build_prompt, continuation_ids

    ref = continuation_ids(tokenizer, record["summary"]) if with_reference else []
    limit = min(n_ctx - len(ref), max_tokens or n_ctx)
    return build_prompt(tokenizer, record["document"], max_tokens=limit), ref


@dataclass(frozen=True)
class FlowWorkerFactory:
    """Worker of corpus flow (``flow.py --docs``): per document, every condition's probe rows,
    and with ``attribution_band`` > 0 the causal map (``attribution_rows``) in bands of that
    many layers, against the document's reference summary; ``attention_rows``: chunked
    attention (``at_probe.models.chunked``, the same numbers).

    A unit's setting is ``""`` (all conditions run on each document, so the per-document
    contrasts stay paired); each record is ``{"doc_id", "prompt_tokens", "dropped_tokens",
    "series"}`` (``dropped_tokens``: document tokens cut so the prompt fits; ``series``: the
    document's rows, ``pack_rows``).
    """

    model: str
    device: str | None
    conditions: dict[str, Any]
    regions: int
    max_tokens: int | None
    attribution_band: int = 0
    attention_rows: int | None = None

    def __call__(self) -> FunctionWorker:
        import torch

        from at_probe.flow.attribution import attribution_sweep
        from at_probe.flow.probe import probe_pass
        from at_probe.models.loading import load_model, model_description
        from at_probe.runs.sweep import FunctionWorker

        model = load_model(self.model, device=self.device, attention_rows=self.attention_rows)
        n_ctx = int(model.cfg.n_ctx)

        def run(unit: Any) -> list[dict[str, Any]]:
            out = []
            for rec in unit.docs:
                doc_id = str(rec["id"])
                prompt, ref = document_prompt(model.tokenizer, rec, n_ctx, self.max_tokens,
                                              bool(self.attribution_band))
                rows = []
                for name, transition in self.conditions.items():
                    result, _ = probe_pass(model, prompt, transition, self.regions)
                    rows += document_rows(result, doc_id=doc_id, condition=name)
                    if self.attribution_band:
                        reference = torch.tensor([ref], device=model.cfg.device)
                        estimate = attribution_sweep(
                            model, prompt.tensor(model.cfg.device), result.region_bounds,
                            reference=reference, band_size=self.attribution_band,
                            labels=result.region_labels, transition=transition)
                        rows += attribution_rows(estimate, doc_id=doc_id, condition=name)
                out.append({"doc_id": doc_id, "prompt_tokens": len(prompt),
                            "dropped_tokens": prompt.dropped, "series": pack_rows(rows)})
            return out

        return FunctionWorker(model_description(model), run)
