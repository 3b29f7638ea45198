"""Report of long-context bench runs: the declared comparisons, accuracy, the needle's attention.

Reads ``records.jsonl`` and ``manifest.json`` (what each run plans: a length is pooled once
its cells are complete) of one or more ``longctx.py`` run directories (the primary and the
secondary run pair their shared passkey prompts; ``at_probe.longctx.report``) and writes into
``--out`` (default: the first run directory):

* ``report.json``: the two primary comparisons (passkey exact match pooled over 1k-4k, 97.5%
  intervals, the answer in words), every declared comparison per task pooled and per length
  (exact match, log-probability and, from runs made with ``--reply-tokens``, the generated
  reply's match; 95% intervals), accuracy per task, length, depth and condition (each on its
  own prompts, with the baseline's on the same prompts; ``replies``: the same for the reply's
  match and the share of replies that ended within the limit), the needle's attention mass
  and value-weighted flow per layer, the knockout estimate per layer and its total against the
  exact knockout where records hold them, and the prompts' token counts;
* figures with their CSVs (``analyses/figures.py`` redraws them): ``longctx_paired`` (paired
  differences), ``longctx_accuracy`` (accuracy by depth x length per condition; ``longctx_replies``
  the same for the generated reply's match, from runs made with ``--reply-tokens``),
  ``longctx_needle`` (needle attention per layer by condition), ``longctx_knockout`` (the
  needle's knockout estimate per layer by condition, from runs made with ``--knockout-estimate``).

The experiment's design and the answer in words: docs/longctx.md.

Usage:
    python analyses/longctx_report.py figures/longctx-smollm2/primary SECONDARY_RUN \\
        --out figures/longctx-smollm2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from at_probe.cli.args import ArgumentParser, existing_dir, output_dir, prog
from at_probe.longctx.report import plan_of, pool_records, report
from at_probe.runs.runfiles import read_jsonl, write_json_atomic


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(prog="longctx_report.py", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", type=existing_dir, nargs="+", help="run directories of longctx.py")
    p.add_argument("--out", type=output_dir, default=None, help="where to write (default: the first run directory)")
    p.add_argument("--no-figures", action="store_true", help="write report.json only")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for name in ("records.jsonl", "manifest.json"):  # the manifest: what the run plans (complete cells)
        missing = [str(r) for r in args.runs if not (r / name).is_file()]
        if missing:
            print(f"{prog('longctx_report.py')}: error: argument runs: no {name} in {', '.join(missing)}",
                  file=sys.stderr)
            return 2
    try:
        pooled = pool_records(read_jsonl(r / "records.jsonl") for r in args.runs)
    except ValueError as err:
        print(f"{prog('longctx_report.py')}: error: {err}", file=sys.stderr)
        return 2
    out = args.out or args.runs[0]
    out.mkdir(parents=True, exist_ok=True)
    try:
        plan = plan_of(json.loads((r / "manifest.json").read_text()) for r in args.runs)
    except (KeyError, json.JSONDecodeError) as err:  # not a longctx.py manifest
        print(f"{prog('longctx_report.py')}: error: argument runs: a manifest.json that is not longctx.py's "
              f"({type(err).__name__}: {err})", file=sys.stderr)
        return 2
    result = {"runs": [str(r) for r in args.runs], **report(pooled, plan)}
    write_json_atomic(out / "report.json", result)
    for row in result["primary"]:
        lo, hi = row["ci97_5"]
        interval = "n/a" if lo is None else f"[{lo:+.3f}, {hi:+.3f}]"
        counts = ", ".join(f"{k}: {v}" for k, v in row["n_per_length"].items())
        print(f"primary {row['comparison']}: {row['mean']:+.3f} exact match, 97.5% CI {interval}, "
              f"n = {row['n']} ({counts}) -> {row['answer']}" if row["n"] else
              f"primary {row['comparison']}: {row['answer']}: paired prompts per length {counts}; "
              "a length is pooled once its cell is complete")
    for row in result["knockout_totals"]:
        print(f"knockout {row['task']} {row['length']} {row['condition']}: first-order estimate {row['estimate']:+.2f}, "
              f"exact {row['exact']:+.2f} nats (n = {row['n']})")
    for (task, length, condition), (n, match, ended) in _per_cell(result["replies"]).items():
        print(f"replies {task} {length} {condition}: match {match:.2f}, ended within the limit {ended:.2f} (n = {n})")
    if not args.no_figures:
        write_figures(result, out)
    print(f"wrote {out / 'report.json'}")
    return 0


def _per_cell(rows: list[dict]) -> dict[tuple[str, int, str], tuple[int, float, float]]:
    """(task, length, condition) -> (prompts, mean match, share ended) of per-depth ``replies`` rows."""
    cells: dict[tuple[str, int, str], list[tuple[int, float, float]]] = {}
    for r in rows:
        cells.setdefault((r["task"], r["length"], r["condition"]), []).append((r["n"], r["reply_match"],
                                                                               r["reply_ended"]))
    return {k: (sum(n for n, _, _ in v), sum(n * m for n, m, _ in v) / sum(n for n, _, _ in v),
                sum(n * e for n, _, e in v) / sum(n for n, _, _ in v)) for k, v in cells.items()}


def write_figures(result: dict, out: Path) -> None:
    """The figures (the knockout one where records hold the estimate), each beside the CSV of its data."""
    import pandas as pd

    from at_probe.runs.plotting import PLOTS, longctx_accuracy, longctx_needle, longctx_paired, save_figure

    rows = [{"comparison": r["comparison"], "metric": r["metric"], "task": r["task"],
             "bucket": "all" if len(r["lengths"]) > 1 else str(r["lengths"][0]),
             "lengths": "+".join(map(str, kept)),
             "mean": r["mean"], "lo": r["ci95"][0], "hi": r["ci95"][1], "n": r["n"]}
            for r in result["comparisons"] if r["task"] == "passkey" and r["ci95"][0] is not None
            for kept in [[l for l in r["lengths"] if l not in r["lengths_left_out"]]]
            if len(r["lengths"]) == 1 or len(kept) > 1]  # a pooled row of one length repeats that length's
    if rows:
        save_figure(longctx_paired(pd.DataFrame(rows)), out, "longctx_paired", pd.DataFrame(rows))
    accuracy, replies = pd.DataFrame(result["accuracy"]), pd.DataFrame(result["replies"])
    if not accuracy.empty:
        save_figure(longctx_accuracy(accuracy), out, "longctx_accuracy", accuracy)
    if not replies.empty:
        save_figure(PLOTS["longctx_replies"](replies), out, "longctx_replies", replies)
    for name, table in (("longctx_needle", "needle"), ("longctx_knockout", "needle_knockout")):
        rows = pd.DataFrame(result[table])
        if not rows.empty:
            rows = rows[rows.task == ("passkey" if "passkey" in set(rows.task) else rows.task.iloc[0])]
            save_figure(longctx_needle(rows), out, name, rows)


if __name__ == "__main__":
    raise SystemExit(main())
