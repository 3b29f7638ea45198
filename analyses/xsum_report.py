"""Report of an ``xsum_eval.py`` run: paired differences, held-out selection, placebo control.

Only documents scored under every setting are used (``n_documents``; the others are counted
in ``n_documents_incomplete``), so every mean and difference is over the same documents; a
setting of the manifest with no records is reported in ``missing_settings``. Per-document
metrics that can be undefined (``source_position_mean`` when an output copies nothing from the
document; ``at_probe.xsum.OPTIONAL_METRICS``) are averaged over the documents where they are
defined; each estimate's ``n`` says how many and ``n_missing`` how many were left out. A NaN in
any other metric is an error.
For every setting and metric: the mean paired difference against the baseline on the same
documents with a 95% bootstrap interval. Across the transition settings: the gain of the
setting chosen on one half of the documents and scored on the other (never the in-sample
best). For each paper setting with a placebo of the same parameters: paper minus placebo,
which isolates *where* the mass goes from merely editing the rows.

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

from at_probe.cliargs import ArgumentParser, existing_dir, nonnegative_int, output_dir, output_file
from at_probe.runfiles import read_jsonl, write_json_atomic
from at_probe.stats import bootstrap_mean, heldout_selected_gain
from at_probe.xsum import OPTIONAL_METRICS

METRICS = ("rouge1", "rouge2", "rougeL", "summary_nll", "repetition_4gram", "novel_bigrams",
           "source_position_mean")
LOWER_IS_BETTER = {"summary_nll", "repetition_4gram"}


def load_run(run: Path):
    import pandas as pd

    path = run / "records.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no records.jsonl in {run}")
    rows = read_jsonl(path)  # complete lines only: a live or killed run may end in a partial one
    return pd.DataFrame(rows)


def differences(frame, metric: str, a: str, b: str):
    """Per-document ``a - b`` of ``metric`` (a Series by doc_id; NaN where either is missing)."""
    wide = frame.pivot_table(index="doc_id", columns="setting", values=metric, aggfunc="first", dropna=False)
    return wide[a].astype(float) - wide[b].astype(float)


def paired(frame, metric: str, a: str, b: str, *, seed: int = 0) -> dict[str, Any]:
    """Bootstrap estimate (``Estimate.to_dict()``) of the mean ``differences`` over ``frame``'s
    documents (all scored under both settings): the documents where an optional metric is
    undefined are left out and counted (``n_missing``); a NaN in any other metric raises."""
    missing = "drop" if metric in OPTIONAL_METRICS else "raise"
    try:
        return bootstrap_mean(differences(frame, metric, a, b).to_numpy(dtype=float), missing=missing,
                              seed=seed).to_dict()
    except ValueError as err:
        raise ValueError(f"{metric} of {a} - {b}: {err}") from None


def placebo_twins(name: str, settings: list[str]) -> list[str]:
    """Placebo settings with the same alpha, beta and k as a paper setting (any seed)."""
    if not name.startswith("paper:"):
        return []
    prefix = "placebo:" + name.removeprefix("paper:") + ","
    return [s for s in settings if s.startswith(prefix)]


def complete_documents(frame):
    """The records of the documents scored under every setting of the run (the paired set)."""
    settings_per_doc = frame.groupby("doc_id")["setting"].nunique()
    keep = settings_per_doc[settings_per_doc == frame["setting"].nunique()].index
    return frame[frame.doc_id.isin(keep)]


def report(frame, *, seed: int = 0, planned: list[str] | None = None) -> dict[str, Any]:
    """Paired estimates over the documents that every setting scored (others are counted, not used).

    ``planned``: the run's settings (from its manifest); those with no record at all are
    listed under ``missing_settings`` rather than silently left out.
    """
    settings = list(dict.fromkeys(frame["setting"]))
    missing = [s for s in (planned or []) if s not in settings]
    all_docs = int(frame["doc_id"].nunique())
    frame = complete_documents(frame)
    treated = [s for s in settings if s != "baseline" and not s.startswith("placebo:")]
    out: dict[str, Any] = {"n_documents": int(frame["doc_id"].nunique()),
                           "n_documents_incomplete": all_docs - int(frame["doc_id"].nunique()),
                           "settings": settings, "missing_settings": missing,
                           "vs_baseline": {}, "vs_placebo": {}, "heldout_selected": {}, "means": {}}
    for s in settings:
        part = frame[frame.setting == s]
        out["means"][s] = {m: float(part[m].astype(float).mean(skipna=m in OPTIONAL_METRICS))
                           for m in METRICS}
        if s == "baseline" or "baseline" not in settings:
            continue
        out["vs_baseline"][s] = {m: paired(frame, m, s, "baseline", seed=seed) for m in METRICS}
    for s in treated:
        for p in placebo_twins(s, settings):
            out["vs_placebo"][f"{s} vs {p}"] = {m: paired(frame, m, s, p, seed=seed) for m in METRICS}
    if treated and "baseline" in settings:
        for m in ("rougeL", "summary_nll"):
            # complete documents only, and these metrics are always defined: a NaN is refused
            gains = np.column_stack([differences(frame, m, s, "baseline").to_numpy() for s in treated])
            if m in LOWER_IS_BETTER:
                gains = -gains  # select the largest improvement
            try:
                est = heldout_selected_gain(gains, seed=seed).to_dict()
            except ValueError as err:
                raise ValueError(f"{m} of the held-out selection: {err}") from None
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
    return pd.DataFrame(rows)


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
    except (FileNotFoundError, ValueError) as err:
        print(f"xsum_report.py: error: {err}", file=sys.stderr)
        return 2
    manifest_path = args.run / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    try:
        result = report(frame, seed=args.seed, planned=None if manifest is None else manifest["settings"])
    except ValueError as err:  # e.g. a NaN score where the metric is always defined
        print(f"xsum_report.py: error: {err}", file=sys.stderr)
        return 2
    if manifest is not None:  # what produced the records: model, prompt style, data, settings
        result["manifest"] = manifest
    if result["missing_settings"]:
        print(f"warning: no records for {', '.join(result['missing_settings'])} (the run is incomplete: "
              "resume xsum_eval.py)", file=sys.stderr)
    print(f"{result['n_documents']} documents scored under every setting "
          f"({result['n_documents_incomplete']} incomplete left out); settings: {', '.join(result['settings'])}")
    for block in ("vs_baseline", "vs_placebo"):
        for name, metrics in result[block].items():
            cells = "  ".join(f"{m} {e['mean']:+.4f} [{e['ci95'][0]:+.4f},{e['ci95'][1]:+.4f}]"
                              for m, e in metrics.items() if m in ("rougeL", "summary_nll"))
            print(f"{name} {block.replace('_', ' ')}: {cells}")
    for m, e in result["heldout_selected"].items():
        print(f"held-out selected setting, {m}: {e['mean']:+.4f} [{e['ci95'][0]:+.4f},{e['ci95'][1]:+.4f}] "
              f"({e['sign']})")
    out_json = args.json or args.run / "report.json"
    out_json.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_json, result)
    print(f"wrote {out_json}")
    if args.figures is not None:
        from at_probe.plotting import save_figure, xsum_paired

        df = figure_frame(result)
        if len(df):
            save_figure(xsum_paired(df), args.figures, "xsum_paired", df)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
