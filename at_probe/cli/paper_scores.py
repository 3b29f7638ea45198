"""Re-analysis of the paper's released GPT-4 judgements (no model needed).

For each length bucket (800/1200/1600/1900 tokens) of the release accompanying arXiv
2307.13365: the released means (baseline and best-of-N, the paper's headline), how many
records parse completely, every setting's mean paired gain over the baseline with a 95%
bootstrap interval, the gain of the best setting when it is *chosen on one half of the
documents and scored on the other* (2-fold, repeated on bootstrap resamples, seeded), the
oracle's control (best-of-N over settings whose text equals the baseline's: pure judge
noise) and how often a setting's text equals the baseline's.

Usage:
    python analyses/paper_scores.py --data ../shared/data/xsum-at-release --json out/paper_scores.json
    python analyses/paper_scores.py --data ../shared/data/xsum-at-release --figures figures/paper_scores
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm.auto import tqdm

from at_probe.cli.args import (
    ArgumentParser,
    existing_dir,
    nonnegative_int,
    output_dir,
    output_file,
    positive_int,
    prog,
)
from at_probe.runs.runfiles import write_json_atomic
from at_probe.runs.stats import describe
from at_probe.xsum import load_records, release_files
from at_probe.xsum.judgements import analyse_bucket, best_setting


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(prog="paper_scores.py", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=existing_dir, default=Path("../shared/data/xsum-at-release"),
                   help="folder with token_<B>_evaluation.json.gz")
    p.add_argument("--json", type=output_file, default=None, help="write every number here")
    p.add_argument("--figures", type=output_dir, default=None, help="write the figure (PNG + CSV) here")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--bootstrap", type=positive_int, default=2000, help="bootstrap resamples for intervals")
    p.add_argument("--repeats", type=positive_int, default=1000, help="repeats of the held-out selection")
    return p.parse_args(argv)


def figure_frame(result: dict):
    """Tidy data of the figure: per-setting gains, and oracle vs held-out vs control (``panel``)."""
    import pandas as pd

    rows = []
    for bucket, r in result["buckets"].items():
        for name, s in r["settings"].items():
            rows.append({"panel": "setting", "bucket": bucket, "label": name.removeprefix("decode_"),
                         "mean_gain": s["mean_gain"], "lo": s["ci95"][0], "hi": s["ci95"][1]})
        for label, est in (("oracle best-of-N (in-sample)", r["oracle_gain"]),
                           ("best setting chosen on held-out half", r["heldout_selected_gain"]),
                           ("oracle control: identical texts", r["oracle_control_identical_text"])):
            rows.append({"panel": "headline", "bucket": bucket, "label": label, "mean_gain": est["mean"],
                         "lo": est["ci95"][0], "hi": est["ci95"][1]})
    frame = pd.DataFrame(rows)  # null (an undefined estimate, reason in the JSON) as NaN
    return frame.astype({"mean_gain": float, "lo": float, "hi": float}) if len(frame) else frame


def print_summary(result: dict) -> None:
    print(f"{'bucket':>6} {'base':>6} {'best-of-N':>9} {'complete':>8} {'oracle gain':>18} "
          f"{'held-out selected':>22} {'identical-text control':>24} {'best in-sample setting'}")
    for bucket, r in result["buckets"].items():
        o, h, c = (describe(r[k], digits=1) for k in ("oracle_gain", "heldout_selected_gain",
                                                       "oracle_control_identical_text"))
        name, best = r["best_in_sample"]["setting"], r["best_in_sample"]
        print(f"{bucket:>6} {r['baseline_mean_released']:6.1f} {r['best_of_n_mean_released']:9.1f} "
              f"{r['n_complete']:>4}/{r['n_records']:<3} {o:>18} {h:>22} {c:>24} "
              f"{name} {best['mean_gain']:+.1f}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        files = release_files(args.data)
        buckets = {b: load_records(p) for b, p in files.items()}
    except (FileNotFoundError, ValueError) as err:
        print(f"{prog('paper_scores.py')}: error: {err}", file=sys.stderr)
        return 2
    result: dict = {"buckets": {}, "args": {k: str(v) for k, v in vars(args).items()}}
    for bucket, records in tqdm(buckets.items(), desc="buckets"):
        r = analyse_bucket(records, seed=args.seed, n_boot=args.bootstrap, repeats=args.repeats)
        name, est = best_setting(r)
        r["best_in_sample"] = {"setting": name, "mean_gain": est.mean, "ci95": est.to_dict()["ci95"]}
        result["buckets"][bucket] = r
    print_summary(result)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.json, result)
        print(f"wrote {args.json}")
    if args.figures is not None:
        from at_probe.runs.plotting import save_figure, setting_gains

        frame = figure_frame(result)
        save_figure(setting_gains(frame), args.figures, "setting_gains", frame)
        write_json_atomic(args.figures / "paper_scores.json", result)
        print(f"wrote {args.figures}/setting_gains.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
