"""XSum summarisation with and without the transition, end to end, resumable.

For each document of a bucket (held-out documents by default: ``int(id) % 4 == 0``, never
seen by the tiny model) and each setting, the model greedily continues the summarisation
prompt (``at_probe.prompts``: the document and the paper's instruction "Please summarize
context above:" as one chat turn for a chat model such as SmolLM2, the paper's plain prompt
for a base model; the manifest records which) and the output (new tokens only) is scored
against the reference: ROUGE-1/2/L F1 (stemmed), 4-gram repetition, novel bigrams, where in the
document copied content comes from, and ``summary_nll``, the teacher-forced NLL of the
reference given the prompt with the setting active (a judge-free comprehension measure).

Settings (``--settings``, separated by ``;``, or ``--selection RUN/selection.json`` for the
settings a development sweep of ``xsum_select.py`` chose):
    baseline
    paper:alpha=A,beta=B,k=K          the 2023 transition
    placebo:alpha=A,beta=B,k=K,seed=S the same rows and mass, random targets (control)
    sra:threshold_len=N,...           the 2025 SRA version (keys of SRATransition)
    temperature:tau=T[,layers=A-B]    scores of layers A..B (default the last half) divided by T
    emphasis:top=N,...  calibration:strength=S,...  and their _placebo twins (need the development
                                      profiles of an alternatives_select.py selection: --selection)

The run directory holds ``manifest.json`` (model, prompt style, data file hash, settings, version) and
``records.jsonl`` (one line per document and setting). Killed at any moment and re-run with
the same arguments, it continues where it stopped; a different configuration is refused, except
that a ``--selection`` run may gain settings (a newer selection file of the same choices and
profiles, ``choices_sha256``, with one more role): the records already there are kept and only
the new settings run.
Work goes in units of (``--batch-size`` documents, setting), planned the same way on every run;
``--workers N`` spreads them over N Ray actors (a local Ray), ``--ray-address ADDR`` over a
cluster's; only this process writes the run directory (``at_probe.sweep``).

Usage:
    python analyses/xsum_eval.py --data ../shared/data/xsum-at-release --bucket 800 --limit 20 --out runs/smol800
    python analyses/xsum_eval.py ... --device cuda --ray-address auto --workers 8   # one GPU per actor
    python analyses/xsum_report.py runs/smol800
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

import at_probe
from at_probe.loading import DEFAULT_MODEL
from at_probe.runfiles import ensure_manifest, file_sha256, json_sha256
from at_probe.sweep import RecordSink, add_sweep_arguments, plan_units, run_units, sweep_options
from at_probe.xsum import (
    BUCKETS,
    SettingError,
    SummaryWorkerFactory,
    bucket_file,
    canonical_selection,
    is_heldout,
    load_records,
    parse_setting,
    parse_settings,
    run_settings,
    setting_roles,
)

DEFAULT_SETTINGS = "baseline;paper:alpha=1,beta=0.5,k=2;placebo:alpha=1,beta=0.5,k=2"


class RunError(Exception):
    """A usage or run-directory problem: reported in one line, exit code 2."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="'smollm2' (default), 'tiny', a local HF Llama directory, or a hub id")
    p.add_argument("--data", type=Path, default=Path("../shared/data/xsum-at-release"))
    p.add_argument("--bucket", choices=BUCKETS, default="800")
    p.add_argument("--split", choices=("heldout", "all"), default="heldout")
    p.add_argument("--limit", type=int, default=None, help="first N documents of the split")
    chosen = p.add_mutually_exclusive_group()
    chosen.add_argument("--settings", default=DEFAULT_SETTINGS)
    chosen.add_argument("--selection", type=Path, default=None,
                        help="selection.json of xsum_select.py or alternatives_select.py: run its test_settings")
    p.add_argument("--max-new-tokens", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default=None)
    p.add_argument("--out", type=Path, required=True, help="run directory")
    add_sweep_arguments(p)
    return p.parse_args(argv)


def read_selection(path: Path, expected: dict[str, Any]) -> dict[str, Any]:
    """A development sweep's ``selection.json`` (of ``xsum_select.py`` or
    ``alternatives_select.py``), checked against the sweep's manifest beside it.

    ``expected`` holds this run's ``model``, ``bucket``, ``data_sha256`` and ``max_new_tokens``:
    settings chosen for another bucket, model, data file or prompt cut are refused, and so is a
    selection whose ``test_settings`` are not what its choices imply (a hand-edited file).
    """
    try:
        selection = json.loads(path.read_text())
        manifest = json.loads((path.parent / "manifest.json").read_text())
        implied = run_settings(canonical_selection(selection))
        tested = [parse_setting(s, selection.get("profiles"))[0] for s in selection["test_settings"]]
    except (OSError, KeyError, TypeError, json.JSONDecodeError, SettingError) as err:
        raise RunError(f"{path} is not the selection.json of an xsum_select.py run directory: {err!r}") from None
    if manifest.get("split") != "development":
        raise RunError(f"{path.parent} is not a development sweep (split {manifest.get('split')!r})")
    differs = [k for k, v in expected.items() if manifest.get(k) != v]
    if differs:
        raise RunError(f"{path} was chosen for another {', '.join(differs)} "
                       f"({', '.join(f'{k}={manifest.get(k)!r}' for k in differs)})")
    if tested != implied:
        if set(tested) < set(implied):  # written before a role was added (emphasis_span_placebo)
            new = sorted(set(implied) - set(tested))
            raise RunError(f"{path} was written by an older at_probe (no {new}): re-run its development "
                           f"script on {path.parent} to refresh it (nothing is recomputed)")
        raise RunError(f"{path}: test_settings {tested} are not those of its choices {implied}")
    return selection


def choices_sha256(selection: dict[str, Any]) -> str:
    """Hash of what a selection's settings do: the chosen settings and the development profiles
    (an emphasis setting's name does not say which heads it steers)."""
    return json_sha256(canonical_selection(selection))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.batch_size < 1 or args.max_new_tokens < 1 or (args.limit is not None and args.limit < 1):
            raise RunError("--batch-size, --max-new-tokens and --limit must be >= 1")
        if args.selection and args.split != "heldout":
            raise RunError("--selection runs the held-out test documents only: drop --split all")
        options = sweep_options(args)
        data_file = bucket_file(args.data, args.bucket)
        selection = read_selection(args.selection, {
            "model": args.model, "bucket": args.bucket, "data_sha256": file_sha256(data_file),
            "max_new_tokens": args.max_new_tokens}) if args.selection else None
        profiles = selection.get("profiles") if selection else None
        settings = parse_settings(";".join(selection["test_settings"]) if selection else args.settings, profiles)
        docs = load_records(data_file)
        if args.split == "heldout":
            docs = [d for d in docs if is_heldout(d["id"])]
        docs = docs[: args.limit]
        config = {"model": args.model, "data_file": data_file.name, "data_sha256": file_sha256(data_file),
                  "bucket": args.bucket, "split": args.split,
                  **({"selection_sha256": file_sha256(args.selection),
                      "choices_sha256": choices_sha256(selection), "roles": setting_roles(selection)}
                     if selection else {}),
                  "limit": args.limit, "settings": list(settings), "max_new_tokens": args.max_new_tokens,
                  "batch_size": args.batch_size,
                  "at_probe_version": at_probe.__version__}
    except (SettingError, RunError, FileNotFoundError, ValueError, OSError) as err:
        print(f"xsum_eval.py: error: {err}", file=sys.stderr)
        return 2

    # a test run gains the roles a newer selection of the same choices adds (same choices_sha256)
    growth = {"growable": ("settings", "roles"), "follows_growth": ("selection_sha256",)} if selection else {}
    sink = RecordSink(args.out / "records.jsonl")
    units = sink.pending(plan_units(list(settings), docs, args.batch_size))
    print(f"{len(docs)} documents x {len(settings)} settings: {len(sink.done)} done, "
          f"{sum(len(u.docs) for u in units)} to go")
    factory = SummaryWorkerFactory(args.model, args.device, ";".join(settings), args.max_new_tokens, profiles)
    with tqdm(total=sum(len(u.docs) for u in units), desc="xsum", unit="summary") as bar:
        try:  # the manifest is written once the model is loaded: a bad --model writes nothing
            run_units(units, factory, sink.write, start=lambda described: ensure_manifest(
                args.out, {**config, **described}, **growth),
                progress=lambda unit: bar.update(len(unit.docs)), **options)
        except (ValueError, OSError) as err:  # a different run in --out, a reference that does not fit
            print(f"xsum_eval.py: error: {err}", file=sys.stderr)
            return 2
    print(f"wrote {sink.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
