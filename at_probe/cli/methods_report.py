"""The transition and its alternatives side by side on the XSum test set: one table, one figure.

Reads reports of ``xsum_experiment.py`` (the transitions', the alternatives', and the sink and
position peers' with the transition taken apart, each with its own baseline run on the same
held-out documents) and puts every method's paired difference
from the baseline, and from its placebo where it has one, on the same axes, per bucket present
in both reports (settings chosen on development documents only, bootstrap 95% intervals over
documents). Writes ``methods_compared.csv`` + ``.png`` (the forest plot, redrawn by
``figures.py``) and ``methods_table.md`` (the README's table) into ``--out``.

Usage:
    python analyses/methods_report.py figures/xsum-smollm2/report.json \\
        figures/xsum-smollm2/alternatives/report.json --out figures/xsum-smollm2/alternatives
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import pandas as pd

from at_probe.cli.args import ArgumentParser, existing_file, output_dir, prog
from at_probe.runs.stats import MIN_DOCS_FOR_INTERVAL, comparison_label, describe
from at_probe.xsum import PRIMARY_METRIC
from at_probe.xsum.settings import TRANSITION_PARTS

METRICS = (PRIMARY_METRIC, "rougeL", "summary_nll")
"""The metrics of the table, the primary first (its column is marked)."""
SAME = ("model", "data_sha256", "split", "limit", "max_new_tokens")
CONTRASTS = (  # (report comparison, method, against)
    ("paper_selected - baseline", "paper transition", "baseline"),
    ("paper_selected - placebo_selected", "paper transition", "placebo"),
    ("sra_selected - baseline", "SRA transition", "baseline"),
    ("emphasis_selected - baseline", "emphasis (PASTA)", "baseline"),
    ("emphasis_selected - emphasis_placebo", "emphasis (PASTA)", "placebo"),
    ("emphasis_selected - emphasis_span_placebo", "emphasis (PASTA)", "placebo"),
    ("calibration_selected - baseline", "calibration (FitM)", "baseline"),
    ("calibration_selected - calibration_placebo", "calibration (FitM)", "placebo"),
    ("temperature_selected - baseline", "temperature", "baseline"),
    ("sink_scaling_selected - baseline", "sink scaling (ZeroTuning)", "baseline"),
    ("sink_scaling_selected - sink_scaling_placebo", "sink scaling (ZeroTuning)", "placebo"),
    ("sink_calibration_selected - baseline", "sink calibration (ACT)", "baseline"),
    ("sink_calibration_selected - sink_calibration_placebo", "sink calibration (ACT)", "placebo"),
    ("adaptive_temperature_selected - baseline", "adaptive temperature", "baseline"),
    ("multiscale_positions_selected - baseline", "multi-scale positions (Ms-PoE)", "baseline"),
    ("multiscale_positions_selected - multiscale_positions_placebo", "multi-scale positions (Ms-PoE)", "placebo"),
    *((f"paper_{name}_selected - {against_role}", f"transition parts: {'+'.join(parts)}", against)
      for name, parts in TRANSITION_PARTS.items()
      for against_role, against in (("baseline", "baseline"), (f"paper_{name}_placebo", "placebo"))
      if against == "baseline" or "move" in parts),
)


def method_rows(reports: list[dict[str, Any]]) -> pd.DataFrame:
    """Tidy rows (comparison, method, against, metric, bucket, mean, lo, hi, n, setting) for the
    buckets every report has."""
    buckets = sorted(set.intersection(*(set(r["buckets"]) for r in reports)), key=int)
    if not buckets:
        raise ValueError("the reports share no bucket")
    for bucket in buckets:  # the same test documents, model and generation in every report
        seen = {tuple(r.get("manifests", {}).get(bucket, {}).get(k) for k in SAME) for r in reports}
        if len(seen) > 1:
            raise ValueError(f"the reports' bucket {bucket} runs differ in {', '.join(SAME)}: {sorted(seen)}")
    rows = []
    for comparison, method, against in CONTRASTS:
        report = next((r for r in reports if comparison in r["comparisons"]), None)
        if report is None:
            continue
        role, other = comparison.split(" - ")
        for metric in METRICS:
            for bucket in buckets:
                e = report["comparisons"][comparison][metric][bucket]
                label = against + placebo_kind(report["buckets"][bucket]["roles"].get(other, ""))
                key = (comparison_label(method, label), bucket, metric)
                if any((r["comparison"], r["bucket"], r["metric"]) == key for r in rows):
                    continue  # both placebo roles name the same setting in this bucket
                rows.append(
                    {
                        "comparison": key[0],
                        "method": method,
                        "against": label,
                        "metric": metric,
                        "bucket": bucket,
                        "mean": e["mean"],
                        "lo": e["ci95"][0],
                        "hi": e["ci95"][1],
                        "n": e["n"],
                        "setting": report["buckets"][bucket]["roles"][role],
                    }
                )
    frame = pd.DataFrame(rows)  # null (an undefined estimate, reason in the report) as NaN
    return frame.astype({"mean": float, "lo": float, "hi": float}) if len(frame) else frame


def placebo_kind(setting: str) -> str:
    """" (random heads)" or " (random span)" for an emphasis placebo setting, else ""."""
    for kind, words in (("placebo=heads", " (random heads)"), ("placebo=span", " (random span)")):
        if kind in setting.split(":", 1)[-1].split(","):
            return words
    return ""


def markdown_table(frame: pd.DataFrame) -> str:
    """One line per method and contrast: each metric's mean [95% CI], per bucket, with
    ``at_probe.runs.stats.describe``'s reason or warning (fewer than ``MIN_DOCS_FOR_INTERVAL``
    documents) in words, never a bare ``nan``."""
    lines = [
        "| method | against | bucket | documents | semantic similarity (primary) | ROUGE-L | summary NLL |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (comparison, bucket), part in frame.groupby(["comparison", "bucket"], sort=False):
        cells = {r.metric: describe({"mean": r.mean, "ci95": [r.lo, r.hi], "n": r.n}, digits=3)
                 for r in part.itertuples()}
        first = part.iloc[0]
        lines.append(
            f"| {first.method} | {first.against} | {bucket} | {first.n} | "
            + " | ".join(cells[m] for m in METRICS)
            + " |"
        )
    if len(frame) and frame["n"].min() < MIN_DOCS_FOR_INTERVAL:
        lines += ["", f"Warning: the marked intervals are over fewer than {MIN_DOCS_FOR_INTERVAL} documents: "
                      "unreliable."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="methods_report.py", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reports", type=existing_file, nargs="+", help="report.json files of xsum_experiment.py")
    p.add_argument("--out", type=output_dir, required=True)
    args = p.parse_args(argv)
    try:
        frame = method_rows([json.loads(path.read_text()) for path in args.reports])
    except (OSError, json.JSONDecodeError, KeyError, ValueError) as err:
        print(f"{prog('methods_report.py')}: error: {err!r}", file=sys.stderr)
        return 2
    from at_probe.runs.plotting import save_figure, xsum_roles

    args.out.mkdir(parents=True, exist_ok=True)
    save_figure(xsum_roles(frame), args.out, "methods_compared", frame)
    (args.out / "methods_table.md").write_text(markdown_table(frame))
    print(markdown_table(frame))
    print(f"wrote {args.out / 'methods_compared.png'} and methods_table.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
