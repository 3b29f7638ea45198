"""Report of an ``xsum_eval.py`` run: paired differences, held-out selection, placebo control.

Only documents scored under every setting are used (``n_documents``; the others are counted
in ``n_documents_incomplete``), so every mean and difference is over the same documents; a
setting of the manifest with no records is reported in ``missing_settings``. Per-document
metrics that can be undefined (``source_position_mean`` when an output copies nothing from the
document; ``at_probe.xsum.OPTIONAL_METRICS``) are averaged over the documents where they are
defined; each estimate's ``n`` says how many and ``n_missing`` how many were left out. A NaN in
any other metric is an error.
The primary metric of the XSum experiment (``semantic_similarity``) is reported first when the
run has its scores (``semantic.jsonl``, written by ``xsum_experiment.py``); an output it has
no score for yet is left out of that metric's estimates and counted (``n_missing``).
For every setting and metric: the mean paired difference against the baseline on the same
documents with a 95% bootstrap interval. Across the transition settings: the gain of the
setting chosen on one half of the documents and scored on the other (never the in-sample
best). For each paper setting with a placebo of the same parameters: paper minus placebo,
which isolates *where* the mass goes from merely editing the rows. An estimate that cannot be
made (too few documents) is printed as ``n/a (reason)`` and written as null with its ``reason``
(a mean: ``means_reasons``); an interval over fewer than 10 documents is marked (``warnings``).

Usage:
    python analyses/xsum_report.py runs/tiny800 [--figures figures/xsum] [--json report.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from at_probe.cli.args import ArgumentParser, existing_dir, nonnegative_int, output_dir, output_file, prog
from at_probe.interventions.registry import is_placebo, placebo_pairs, setting_parts
from at_probe.runs.runfiles import read_jsonl, write_json_atomic
from at_probe.runs.stats import (
    MIN_DOCS_FOR_INTERVAL,
    bootstrap_mean,
    comparison_label,
    describe,
    few_documents,
    heldout_selected_gain,
)
from at_probe.xsum import OPTIONAL_METRICS, PRIMARY_METRIC

METRICS = ("rouge1", "rouge2", "rougeL", "summary_nll", "repetition_4gram", "novel_bigrams",
           "source_position_mean")
"""The metrics of ``xsum_eval.py``'s records; ``PRIMARY_METRIC`` comes before them when the run has it."""
LOWER_IS_BETTER = {"summary_nll", "repetition_4gram"}
LEFT_OUT_WHERE_UNDEFINED = frozenset({*OPTIONAL_METRICS, PRIMARY_METRIC})
"""Metrics whose undefined values are left out and counted: ``OPTIONAL_METRICS``, and the
primary metric for an output that the run's semantic scores do not cover (yet)."""
SHOWN = ("rougeL", "summary_nll")
"""The metrics printed (after the primary metric); ``report.json`` has every one."""


def vs_label(a: str, b: str) -> str:
    """The label of ``a`` minus ``b`` (``vs_placebo``'s JSON key and every printed line)."""
    return comparison_label(a, b, sep=" vs ")


def load_run(run: Path):
    import pandas as pd

    path = run / "records.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no records.jsonl in {run}")
    rows = read_jsonl(path)  # complete lines only: a live or killed run may end in a partial one
    return pd.DataFrame(rows)


def add_primary_metric(run: Path, frame) -> str | None:
    """Add ``PRIMARY_METRIC`` to ``frame`` (records of ``run``) from the run's semantic scores,
    NaN for an output they do not cover; returns None, or why the run has no such scores."""
    from at_probe.xsum.semantic import SCORES_FILE, read_scores, score_key

    scores = read_scores(run)
    if not scores:
        return f"no scores in {run / SCORES_FILE} (xsum_experiment.py writes them for a test run)"
    frame[PRIMARY_METRIC] = [scores.get(score_key(d, s, o), float("nan"))
                             for d, s, o in zip(frame.doc_id, frame.setting, frame.output)]
    return None


def differences(frame, metric: str, a: str, b: str):
    """Per-document ``a - b`` of ``metric`` (a Series by doc_id; NaN where either is missing)."""
    wide = frame.pivot_table(index="doc_id", columns="setting", values=metric, aggfunc="first", dropna=False)
    return wide[a].astype(float) - wide[b].astype(float)


def paired(frame, metric: str, a: str, b: str, *, seed: int = 0) -> dict[str, Any]:
    """Bootstrap estimate (``Estimate.to_dict()``) of the mean ``differences`` over ``frame``'s
    documents (all scored under both settings): the documents where a metric of
    ``LEFT_OUT_WHERE_UNDEFINED`` is undefined are left out and counted (``n_missing``); a NaN
    in any other metric raises."""
    missing = "drop" if metric in LEFT_OUT_WHERE_UNDEFINED else "raise"
    try:
        return bootstrap_mean(differences(frame, metric, a, b).to_numpy(dtype=float), missing=missing,
                              seed=seed).to_dict()
    except ValueError as err:
        raise ValueError(f"{metric} of {a} - {b}: {err}") from None


def complete_documents(frame):
    """The records of the documents scored under every setting of the run (the paired set)."""
    settings_per_doc = frame.groupby("doc_id")["setting"].nunique()
    keep = settings_per_doc[settings_per_doc == frame["setting"].nunique()].index
    return frame[frame.doc_id.isin(keep)]


def report(frame, *, seed: int = 0, planned: list[str] | None = None,
           primary_reason: str | None = None) -> dict[str, Any]:
    """Paired estimates over the documents that every setting scored (others are counted, not used).

    ``planned``: the run's settings (from its manifest); those with no record at all are
    listed under ``missing_settings`` rather than silently left out. ``PRIMARY_METRIC`` is
    reported first when ``frame`` has its column, else ``primary`` says why not
    (``primary_reason``).
    """
    has_primary = PRIMARY_METRIC in frame.columns
    metrics = (PRIMARY_METRIC, *METRICS) if has_primary else METRICS
    settings = list(dict.fromkeys(frame["setting"]))
    missing = [s for s in (planned or []) if s not in settings]
    all_docs = int(frame["doc_id"].nunique())
    frame = complete_documents(frame)
    treated = [s for s in settings if s != "baseline" and not is_placebo(setting_parts(s)[0])]
    out: dict[str, Any] = {"n_documents": int(frame["doc_id"].nunique()),
                           "n_documents_incomplete": all_docs - int(frame["doc_id"].nunique()),
                           "settings": settings, "missing_settings": missing,
                           "vs_baseline": {}, "vs_placebo": {}, "heldout_selected": {}, "means": {},
                           "primary": {"metric": PRIMARY_METRIC, "reported": has_primary}}
    if has_primary:  # outputs the run's scores do not cover yet: left out of its estimates, counted
        out["primary"]["n_unscored"] = int(frame[PRIMARY_METRIC].isna().sum())
    else:
        out["primary"]["reason"] = primary_reason or f"the records have no {PRIMARY_METRIC}"
    if out["n_documents"] < MIN_DOCS_FOR_INTERVAL:
        out["warnings"] = [few_documents(out["n_documents"])]
    undefined: dict[str, dict[str, str]] = {}
    for s in settings:
        part = frame[frame.setting == s]
        out["means"][s] = {}
        for m in metrics:
            value = float(part[m].astype(float).mean(skipna=m in LEFT_OUT_WHERE_UNDEFINED))
            out["means"][s][m] = None if np.isnan(value) else value  # JSON null, with its reason
            if np.isnan(value):
                undefined.setdefault(s, {})[m] = f"{m} is undefined for every document of {s}"
        if s == "baseline" or "baseline" not in settings:
            continue
        out["vs_baseline"][s] = {m: paired(frame, m, s, "baseline", seed=seed) for m in metrics}
    if undefined:
        out["means_reasons"] = undefined
    for s, p in placebo_pairs(settings):  # every registered method's placebo twins, any seed
        out["vs_placebo"][vs_label(s, p)] = {m: paired(frame, m, s, p, seed=seed) for m in metrics}
    if treated and "baseline" in settings:
        for m in (PRIMARY_METRIC, *SHOWN) if has_primary else SHOWN:
            gains = np.column_stack([differences(frame, m, s, "baseline").to_numpy() for s in treated])
            # complete documents only; of the primary metric, those scored under every setting
            # (the others counted), while the other metrics are always defined: a NaN is refused
            scored = ~np.isnan(gains).any(axis=1) if m in LEFT_OUT_WHERE_UNDEFINED else slice(None)
            if m in LOWER_IS_BETTER:
                gains = -gains  # select the largest improvement
            try:
                est = heldout_selected_gain(gains[scored], seed=seed).to_dict()
            except ValueError as err:
                raise ValueError(f"{m} of the held-out selection: {err}") from None
            if m in LEFT_OUT_WHERE_UNDEFINED:
                est["n_missing"] = len(gains) - est["n"]
            out["heldout_selected"][m] = {**est, "sign": "improvement (baseline - setting)"
                                          if m in LOWER_IS_BETTER else "setting - baseline"}
    return out


def figure_frame(result: dict[str, Any]):
    import pandas as pd

    rows = []
    for comparison, block in (("vs baseline", result["vs_baseline"]), ("vs placebo", result["vs_placebo"])):
        for name, metrics in block.items():
            for m, est in metrics.items():
                rows.append({"comparison": comparison, "setting": name, "metric": m, "mean": est["mean"],
                             "lo": est["ci95"][0], "hi": est["ci95"][1], "n": est["n"]})
    frame = pd.DataFrame(rows)  # null (an undefined estimate, reason in report.json) as NaN
    return frame.astype({"mean": float, "lo": float, "hi": float}) if len(frame) else frame


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="xsum_report.py", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=existing_dir)
    p.add_argument("--json", type=output_file, default=None)
    p.add_argument("--figures", type=output_dir, default=None)
    p.add_argument("--seed", type=nonnegative_int, default=0, help="bootstrap seed (default 0)")
    args = p.parse_args(argv)
    try:
        frame = load_run(args.run)
        primary_reason = add_primary_metric(args.run, frame)
    except (FileNotFoundError, ValueError) as err:
        print(f"{prog('xsum_report.py')}: error: {err}", file=sys.stderr)
        return 2
    manifest_path = args.run / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    try:
        result = report(frame, seed=args.seed, planned=None if manifest is None else manifest["settings"],
                        primary_reason=primary_reason)
    except ValueError as err:  # e.g. a NaN score where the metric is always defined
        print(f"{prog('xsum_report.py')}: error: {err}", file=sys.stderr)
        return 2
    if manifest is not None:  # what produced the records: model, prompt style, data, settings
        result["manifest"] = manifest
    if result["missing_settings"]:
        print(f"warning: no records for {', '.join(result['missing_settings'])} (the run is incomplete: "
              "resume xsum_eval.py)", file=sys.stderr)
    print(f"{result['n_documents']} documents scored under every setting "
          f"({result['n_documents_incomplete']} incomplete left out); settings: {', '.join(result['settings'])}")
    for warning in result.get("warnings", []):
        print(f"warning: {warning} (each such interval is marked)")
    primary = result["primary"]
    n = primary.get("n_unscored", 0)
    unscored = (f"; {n} output{'s' * (n != 1)} without a score yet (left out of it, counted in n_missing)"
                if n else "")
    print(f"primary metric {primary['metric']}: "
          + (f"listed first{unscored}" if primary["reported"] else f"not reported: {primary['reason']}"))
    shown = (PRIMARY_METRIC, *SHOWN) if primary["reported"] else SHOWN

    def cell(m: str, e: dict[str, Any]) -> str:
        return f"{m}{' (primary)' * (m == PRIMARY_METRIC)} {describe(e)}"

    labelled = [*((vs_label(s, "baseline"), block) for s, block in result["vs_baseline"].items()),
                *result["vs_placebo"].items()]  # vs_placebo's keys are comparison labels already
    for label, metrics in labelled:
        print(f"{label}: " + "  ".join(cell(m, metrics[m]) for m in shown))
    for m, e in result["heldout_selected"].items():
        print(f"held-out selected setting, {cell(m, e)} ({e['sign']})")
    out_json = args.json or args.run / "report.json"
    out_json.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_json, result)
    print(f"wrote {out_json}")
    if args.figures is not None:
        from at_probe.runs.plotting import save_figure, xsum_paired

        df = figure_frame(result)
        if len(df):
            save_figure(xsum_paired(df), args.figures, "xsum_paired", df)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
