"""Report of the XSum experiment: test runs of several buckets, compared by role, with the
pre-declared primary metric and comparison.

Each run directory is a test run of ``xsum_eval.py --selection`` (its manifest maps the roles
``baseline``, ``paper_example``, ``paper_selected``, ``placebo_example``, ``placebo_selected``,
``sra_selected`` to the settings chosen on that bucket's development documents; or, for an
``alternatives_select.py`` selection, ``<method>_selected`` and its placebo roles (e.g.
``emphasis_selected``, ``emphasis_placebo``, ``sink_scaling_selected``, ``paper_move_placebo``),
each method compared with the baseline and its placebos: ``alternative_comparisons``). Documents
scored under every setting of their run are used; each comparison is a paired difference per
document, pooled over the buckets with a bootstrap that resamples documents within their
bucket (95% interval), and given per bucket too. A metric that is undefined for some outputs
(``source_position_mean``, ``at_probe.xsum.OPTIONAL_METRICS``) is estimated on the documents
where it is defined, and its estimates count the others (``n_missing``); a NaN in any other
metric is an error. An estimate that cannot be made (a bucket of one document) is printed as
``n/a (reason)`` and written as null with its ``reason`` (a mean: ``means_reasons``); a bucket
of fewer than 10 documents is named under ``warnings`` and its intervals are marked.

Primary (declared in the README before the results were seen): semantic similarity of the
summary to the reference (all-MiniLM-L6-v2 cosine, ``at_probe.xsum.semantic``), selected paper
setting minus its placebo. Everything else is secondary.

Placebo draws: a run made with ``xsum_eval.py --placebo-seeds N`` holds N draws of each placebo
role (``placebo_draws`` in its manifest; every draw is per document). Its comparisons count a
placebo role as the mean over the draws of each document, so the interval includes the
variation between draws; ``single_draw`` in ``report.json`` repeats them with seed 0 alone.
A run of chosen roles (``--roles``) reports only the comparisons of the roles it has.

Semantic similarity needs the references: they are read from the release file named in each
manifest (its sha256 is checked) under ``--data``, and the scores are cached in
``<run>/semantic.jsonl``.

Writes into ``--out``: ``report.json`` (every estimate, each bucket's roles, the manifests),
``comparisons.csv`` + ``xsum_roles.png`` (the forest plot), ``examples.md`` (the first
documents of each bucket side by side, not picked by outcome).

Usage:
    python analyses/xsum_experiment.py figures/xsum-smollm2/test-800 figures/xsum-smollm2/test-1900 \\
        --out figures/xsum-smollm2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from at_probe.cli.args import ArgumentParser, UsageError, existing_dir, nonnegative_int, output_dir, prog
from at_probe.interventions import registry
from at_probe.runs.runfiles import (
    append_jsonl,
    file_sha256,
    owned_run,
    read_jsonl,
    write_json_atomic,
    write_text_atomic,
)
from at_probe.runs.stats import (
    MIN_DOCS_FOR_INTERVAL,
    bootstrap_mean,
    comparison_label,
    describe,
    few_documents,
    stratified_bootstrap_mean,
)
from at_probe.xsum import OPTIONAL_METRICS, PRIMARY_METRIC, load_records

PRIMARY_COMPARISON = ("paper_selected", "placebo_selected")
METRICS = (PRIMARY_METRIC, "rouge1", "rouge2", "rougeL", "summary_nll", "repetition_4gram",
           "novel_bigrams", "source_position_mean")
COMPARISONS = (PRIMARY_COMPARISON, ("paper_example", "placebo_example"), ("paper_selected", "baseline"),
               ("paper_example", "baseline"), ("sra_selected", "baseline"), ("placebo_selected", "baseline"),
               ("placebo_example", "baseline"))
TRANSITION_ROLES = frozenset({"baseline", *(r for c in COMPARISONS for r in c)})
"""The roles of an ``xsum_select.py`` selection (``setting_roles``); any other role makes a run one
of an ``alternatives_select.py`` selection."""
OPTIONAL_ROLES = frozenset({"emphasis_span_placebo"})
"""Roles a run made before they existed lacks: their comparisons are left out (listed when
another run of the report has the role)."""


def alternative_comparisons(roles: list[dict[str, str]]) -> tuple[tuple[str, str], ...]:
    """The comparisons of runs of an ``alternatives_select.py`` selection, from their roles: each
    method (a role ``<m>_selected``) against the baseline and against each of its placebo roles
    (``<m>_<suffix>`` for the suffixes its setting's method declares, ``registry.Placebo.roles``,
    where the twin applies to the setting),
    then each placebo role against the baseline; methods in the order of the roles. No single
    comparison was declared primary for them."""
    names = list(dict.fromkeys(r for run in roles for r in run))
    settings = {r: run[r] for run in reversed(roles) for r in run}
    methods = [r.removesuffix("_selected") for r in names if r.endswith("_selected")]
    against, placebo_rows = [], []
    for m in methods:
        kind = settings[f"{m}_selected"].partition(":")[0]
        twin = registry.method(kind).placebo if kind in registry.kinds() else None
        # every placebo role its setting implies, present or not: a run that lacks one is refused
        # (or, for OPTIONAL_ROLES, the comparison is left out and listed) by usable_comparisons
        has = twin is not None and twin.applies_to(settings[f"{m}_selected"])
        placebos = [f"{m}_{suffix}" for suffix in twin.roles] if has else []
        against += [(f"{m}_selected", "baseline"), *((f"{m}_selected", p) for p in placebos)]
        placebo_rows += [(p, "baseline") for p in placebos]
    return (*against, *placebo_rows)


def comparisons_for(roles: list[dict[str, str]]) -> tuple[tuple[str, str], ...]:
    """The comparisons of runs of one family (transitions or alternatives), from their roles.

    Raises:
        ReportError: runs of both families mixed.
    """
    transitions = {set(run) <= TRANSITION_ROLES for run in roles}
    if len(transitions) != 1:
        raise ReportError("the runs mix a transitions selection and an alternatives selection: report them apart")
    return COMPARISONS if transitions.pop() else alternative_comparisons(roles)


class ReportError(Exception):
    """A run that cannot be reported (message in one line, exit code 2)."""


def load_test_run(run: Path, data_dir: Path) -> tuple[dict[str, Any], pd.DataFrame]:
    """(manifest, records of the documents complete under every setting); ``semantic_scores``
    adds their semantic similarity."""
    manifest_path, records_path = run / "manifest.json", run / "records.jsonl"
    if not manifest_path.is_file() or not records_path.is_file():
        raise ReportError(f"{run} is not an xsum_eval.py run directory (manifest.json, records.jsonl)")
    manifest = json.loads(manifest_path.read_text())
    if "roles" not in manifest or manifest.get("split") != "heldout":
        raise ReportError(f"{run} is not a test run: run xsum_eval.py --selection on the held-out documents")
    named = {*manifest["roles"].values(), *(s for draws in manifest.get("placebo_draws", {}).values() for s in draws)}
    missing = sorted(named - set(manifest["settings"]))
    if missing:
        raise ReportError(f"{run}: roles name settings the run does not have: {missing}")
    records = pd.DataFrame(read_jsonl(records_path))
    if records.empty:
        raise ReportError(f"{run} has no records yet: resume xsum_eval.py")
    complete = records.groupby("doc_id")["setting"].nunique() == len(manifest["settings"])
    records = records[records.doc_id.isin(complete[complete].index)].copy()
    if records.empty:
        raise ReportError(f"{run} has no document scored under every setting yet: resume xsum_eval.py")
    return manifest, records


def release_records(run: Path, manifest: dict[str, Any], data_dir: Path) -> list[dict[str, Any]]:
    """The release file a run was made from (its sha256 checked), in release order, its text
    repaired when the run's was (``fix_text`` in the manifest)."""
    data_file = data_dir / manifest["data_file"]
    if not data_file.is_file() or file_sha256(data_file) != manifest["data_sha256"]:
        raise ReportError(f"{data_file} is missing or differs from the file {run} was run on")
    return load_records(data_file, fix_text=manifest.get("fix_text", False))


def semantic_scores(run: Path, records: pd.DataFrame, release: list[dict[str, Any]]) -> list[float]:
    """Cosine similarity of each record's output to its reference, cached in ``semantic.jsonl``
    by (document, setting, sha256 of the output): a regenerated output is scored again."""
    from at_probe.xsum.semantic import EMBEDDER, SCORES_FILE, read_scores, score_key, similarity

    cache_path = run / SCORES_FILE
    with owned_run(run, role="semantic"):  # one writer of the cache; xsum_eval.py may still run there
        cache = read_scores(run, repair=True)
        keys = [score_key(d, s, o) for d, s, o in zip(records.doc_id, records.setting, records.output)]
        todo = [(k, o) for k, o in zip(keys, records.output) if k not in cache]
        if todo:
            references = {str(r["id"]): r["summary"] for r in release}
            sims = similarity([o for _, o in todo], [references[k[0]] for k, _ in todo])
            new = [{"doc_id": k[0], "setting": k[1], "output_sha256": k[2], "embedder": EMBEDDER,
                    "semantic_similarity": v} for (k, _), v in zip(todo, sims)]
            with open(cache_path, "a", encoding="utf-8") as fh:
                append_jsonl(fh, new)
            cache.update({(r["doc_id"], r["setting"], r["output_sha256"]): r["semantic_similarity"]
                          for r in new})
    return [cache[k] for k in keys]


def role_settings(manifest: dict[str, Any], role: str, *, pooled: bool = True) -> list[str]:
    """The settings whose records make up ``role``: its placebo draws (``xsum_eval.py
    --placebo-seeds``, seed 0 first) when ``pooled``, else its own setting alone."""
    draws = manifest.get("placebo_draws", {}).get(role) if pooled else None
    return list(draws) if draws else [manifest["roles"][role]]


def role_differences(manifest: dict[str, Any], records: pd.DataFrame, a: str, b: str,
                     metric: str, *, pooled: bool = True) -> np.ndarray:
    """Per-document ``role a - role b`` of ``metric`` (NaN where the metric is undefined).

    A role with several placebo draws counts as the mean over its draws of each document, so
    the spread between draws enters every document's difference and hence the bootstrap
    interval over documents; ``pooled=False`` uses the seed-0 draw alone (the single-draw
    comparison). A document where some draw leaves the metric undefined is NaN.
    """
    wide = records.pivot_table(index="doc_id", columns="setting", values=metric, aggfunc="first",
                               dropna=False)

    def value(role: str) -> pd.Series:
        return wide[role_settings(manifest, role, pooled=pooled)].astype(float).mean(axis=1, skipna=False)

    return (value(a) - value(b)).to_numpy()


def experiment_report(runs: list[tuple[dict[str, Any], pd.DataFrame]], *, seed: int = 0) -> dict[str, Any]:
    """Every comparison x metric, pooled over buckets (stratified bootstrap) and per bucket.

    Raises:
        ReportError: runs of different families (transitions and alternatives) mixed, or a
            NaN or infinite value of a metric that is always defined (not ``OPTIONAL_METRICS``).
    """
    family = comparisons_for([m["roles"] for m, _ in runs])
    comparisons, left_out = usable_comparisons(family, [m["roles"] for m, _ in runs],
                                               subset=any(m.get("roles_subset") for m, _ in runs))
    primary = PRIMARY_COMPARISON if family is COMPARISONS and PRIMARY_COMPARISON in comparisons else None
    out: dict[str, Any] = {
        "left_out": [comparison_label(*c) for c in left_out],
        "primary": {"metric": PRIMARY_METRIC, "comparison": comparison_label(*primary) if primary else None},
        "buckets": {m["bucket"]: {"n_documents": int(r.doc_id.nunique()), "roles": m["roles"]}
                    for m, r in runs},
        "comparisons": {}, "means": {},
    }
    def estimates(a: str, b: str, pooled: bool) -> dict[str, Any]:
        block = {}
        for metric in METRICS:
            per_bucket = {m["bucket"]: role_differences(m, r, a, b, metric, pooled=pooled) for m, r in runs}
            # an undefined source position is left out and counted (n_missing); any other NaN is a bug
            missing = "drop" if metric in OPTIONAL_METRICS else "raise"
            try:
                block[metric] = {"all": stratified_bootstrap_mean(list(per_bucket.values()), missing=missing,
                                                                  seed=seed).to_dict(),
                                 **{k: bootstrap_mean(v, missing=missing, seed=seed).to_dict()
                                    for k, v in per_bucket.items()}}
            except ValueError as err:
                raise ReportError(f"{metric} of {a} - {b}: {err}") from None
        return block

    drawn = {role for m, _ in runs for role in m.get("placebo_draws", {})}
    out["placebo_draws"] = {m["bucket"]: m.get("placebo_draws", {}) for m, _ in runs}
    out["single_draw"] = {}  # the same comparisons with seed 0 alone, beside the pooled ones
    for a, b in comparisons:
        out["comparisons"][comparison_label(a, b)] = estimates(a, b, pooled=True)
        if drawn & {a, b}:
            out["single_draw"][comparison_label(a, b)] = estimates(a, b, pooled=False)
    for m, r in runs:
        out["means"][m["bucket"]] = {
            role: {metric: float(r[r.setting.isin(role_settings(m, role))][metric].astype(float)
                                 .mean(skipna=metric in OPTIONAL_METRICS))
                   for metric in METRICS} for role in m["roles"]}
    out.update(undefined_means(out["means"]))
    few = {bucket: b["n_documents"] for bucket, b in out["buckets"].items()
           if b["n_documents"] < MIN_DOCS_FOR_INTERVAL}
    if few:  # every estimate is marked too; this says it once, per bucket
        out["warnings"] = [f"bucket {bucket}: {few_documents(n)}" for bucket, n in few.items()]
    if primary:
        name = out["primary"]["comparison"]
        out["primary"]["estimate"] = out["comparisons"][name][PRIMARY_METRIC]["all"]
        if name in out["single_draw"]:
            out["primary"]["single_draw_estimate"] = out["single_draw"][name][PRIMARY_METRIC]["all"]
    return out


def undefined_means(means: dict[str, dict[str, dict[str, float]]]) -> dict[str, Any]:
    """The NaN means of ``means[bucket][role][metric]`` set to None (JSON null), in place, and
    ``{"means_reasons": {bucket: {role: {metric: reason}}}}`` saying why ({} if none is NaN):
    an optional metric undefined for every document of the role."""
    reasons: dict[str, Any] = {}
    for bucket, roles in means.items():
        for role, values in roles.items():
            for metric, value in values.items():
                if value is not None and np.isnan(value):
                    values[metric] = None
                    reasons.setdefault(bucket, {}).setdefault(role, {})[metric] = (
                        f"{metric} is undefined for every document of {role}")
    return {"means_reasons": reasons} if reasons else {}


def usable_comparisons(family: tuple[tuple[str, str], ...], roles: list[dict[str, str]], *,
                       subset: bool = False) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(comparisons to report, comparisons left out) for runs with these roles.

    A comparison of an ``OPTIONAL_ROLES`` role is left out when some run lacks the role, or when
    it repeats an earlier comparison's settings in every run (the span placebo is the placebo
    when the instruction is emphasised). Every other comparison is always reported, except in
    runs of chosen roles (``xsum_eval.py --roles``, ``subset``): there a comparison of a role
    the runs lack is left out.

    Raises:
        ReportError: a run lacks a role that is not optional (in a run of every role), or no
            comparison is left to report.
    """
    missing = {r for c in family for r in c for run in roles if r not in run}
    if missing - OPTIONAL_ROLES and not subset:
        raise ReportError(f"a run lacks the roles {sorted(missing - OPTIONAL_ROLES)}")
    kept, left_out, seen = [], [], set()
    for a, b in family:
        pairs = tuple((run[a], run[b]) for run in roles) if {a, b}.isdisjoint(missing) else None
        if pairs is None or (pairs in seen and not OPTIONAL_ROLES.isdisjoint((a, b))):
            left_out.append((a, b))
        else:
            kept.append((a, b))
            seen.add(pairs)
    if not kept:
        raise ReportError("the runs share no comparison of their roles")
    return kept, left_out


def comparisons_frame(result: dict[str, Any]) -> pd.DataFrame:
    """Tidy rows (comparison, metric, bucket or "all", mean, lo, hi, n) of every estimate (NaN
    where an estimate is undefined: its ``reason`` is in ``report.json``)."""
    rows = [{"comparison": c, "metric": metric, "bucket": bucket, "mean": e["mean"], "lo": e["ci95"][0],
             "hi": e["ci95"][1], "n": e["n"]}
            for c, block in result["comparisons"].items() for metric, by in block.items()
            for bucket, e in by.items()]
    return pd.DataFrame(rows).astype({"mean": float, "lo": float, "hi": float})


def examples_markdown(runs: list[tuple[dict[str, Any], pd.DataFrame]], releases: list[list[dict[str, Any]]],
                      per_bucket: int = 2) -> str:
    """The first ``per_bucket`` complete documents of each bucket (release order): reference and
    the baseline, selected paper and placebo summaries side by side."""
    lines = ["# XSum outputs side by side", "",
             "The first complete held-out documents of each bucket in release order "
             "(not chosen by outcome).", ""]
    for (manifest, records), release in zip(runs, releases):
        refs = {str(r["id"]): r["summary"] for r in release}
        docs = [d for d in refs if d in set(records.doc_id)][:per_bucket]
        for doc in docs:
            lines += [f"## bucket {manifest['bucket']}, document {doc}", "", "| | summary |", "| --- | --- |",
                      f"| reference | {refs[doc]} |"]
            shown = [r for r in manifest["roles"] if r == "baseline" or r.endswith(("_selected", "_placebo"))]
            for role in shown:
                name = manifest["roles"][role]
                text = records[(records.doc_id == doc) & (records.setting == name)].output.iloc[0]
                cell = text.strip().replace("|", "/").replace("\n", " ")
                lines.append(f"| {role} (`{name}`) | {cell} |")
            lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="xsum_experiment.py", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", type=existing_dir, nargs="+",
                   help="test run directories (xsum_eval.py --selection)")
    p.add_argument("--data", type=existing_dir, default=Path("../shared/data/xsum-at-release"))
    p.add_argument("--out", type=output_dir, required=True)
    p.add_argument("--seed", type=nonnegative_int, default=0, help="bootstrap seed (default 0)")
    args = p.parse_args(argv)
    try:
        runs = [load_test_run(run, args.data) for run in args.runs]
        buckets = [m["bucket"] for m, _ in runs]
        if len(set(buckets)) < len(buckets):
            raise ReportError(f"two runs of the same bucket ({buckets}): give one test run per bucket")
        releases = [release_records(run, m, args.data) for run, (m, _) in zip(args.runs, runs)]
    except (ReportError, FileNotFoundError, ValueError, OSError) as err:
        print(f"{prog('xsum_experiment.py')}: error: {err}", file=sys.stderr)
        return 2
    from at_probe.xsum.semantic import MissingEmbeddingModelError

    try:  # the outputs embedded (cached beside each run's records); a bug keeps its traceback
        for run, (_, records), release in zip(args.runs, runs, releases):
            records["semantic_similarity"] = semantic_scores(run, records, release)
    except (UsageError, OSError, MissingEmbeddingModelError) as err:  # a busy or corrupt cache, no embedder
        print(f"{prog('xsum_experiment.py')}: error: {err}", file=sys.stderr)
        return 2
    try:
        result = experiment_report(runs, seed=args.seed)
    except ReportError as err:
        print(f"{prog('xsum_experiment.py')}: error: {err}", file=sys.stderr)
        return 2
    result["manifests"] = {m["bucket"]: m for m, _ in runs}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "report.json", result)
    write_text_atomic(args.out / "examples.md", examples_markdown(runs, releases))
    from at_probe.runs.plotting import save_figure, xsum_roles

    frame = comparisons_frame(result)
    save_figure(xsum_roles(frame), args.out, "xsum_roles", frame)
    for warning in result.get("warnings", []):
        print(f"warning: {warning} (each such interval is marked)")
    if result["primary"]["comparison"]:
        e = result["primary"]["estimate"]
        seeds = max((len(d) for draws in result["placebo_draws"].values() for d in draws.values()), default=1)
        print(f"primary: {result['primary']['metric']}, {result['primary']['comparison']}: {describe(e)} "
              f"over {e['n']} documents" + (f" ({seeds} placebo draws per document)" if seeds > 1 else ""))
        if "single_draw_estimate" in result["primary"]:
            print(f"primary, placebo seed 0 alone: {describe(result['primary']['single_draw_estimate'])}")
    for c, block in result["comparisons"].items():
        cells = "  ".join(f"{m}{' (primary)' * (m == PRIMARY_METRIC)} {describe(block[m]['all'])}"
                          for m in (PRIMARY_METRIC, "rougeL", "summary_nll"))
        print(f"{c:<36} {cells}")
    if result["left_out"]:
        print("left out (a run lacks a role, or the same settings as above): " + ", ".join(result["left_out"]))
    print(f"wrote {args.out / 'report.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
