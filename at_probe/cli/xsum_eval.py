"""XSum summarisation with and without the transition, end to end, resumable.

For each document of a bucket (held-out documents by default: ``int(id) % 4 == 0``, never
seen by the tiny model) and each setting, the model greedily continues the summarisation
prompt (``at_probe.models.prompts``: the document and the paper's instruction "Please summarize
context above:" as one chat turn for a chat model such as SmolLM2, the paper's plain prompt
for a base model; the manifest records which) and the output (new tokens only) is scored
against the reference: ROUGE-1/2/L F1 (stemmed), 4-gram repetition, novel bigrams, where in the
document copied content comes from, and ``summary_nll``, the teacher-forced NLL of the
reference given the prompt with the setting active (a judge-free comprehension measure).

ROUGE uses rouge-score's standard tokenizer, as the literature does: it keeps ASCII letters and
digits only (``--rouge-tokenizer unicode`` counts every script). ``--fix-text`` repairs the
release's mojibake (``Â£`` for ``£``) in documents and references with ftfy and prints how many
documents it changed. Both are recorded in the manifest; a run resumed with other values is
refused.

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
One driver at a time: a second run on the same ``--out`` exits 2 naming the first (pid, host,
command line, start time); every setting is checked against the model's config (layers,
heads, profiles) before anything is written.
Work goes in units of (``--batch-size`` documents, setting), planned the same way on every run;
``--workers N`` spreads them over N Ray actors (a local Ray), ``--ray-address ADDR`` over a
cluster's; only this process writes the run directory (``at_probe.runs.sweep``).
``--attention-rows R`` computes attention over blocks of ``R`` query rows (chunked attention,
without the stock forward's ``T x T`` pattern: the same summaries, NLLs within about 1e-6); like
``--workers`` it changes how the run is computed, not what, so a run may resume with or without it.
``--reuse-records RUN`` takes the records this run plans from an earlier run made with the same
model, data, documents (``--split``, ``--limit``), ``--batch-size`` and generation and scoring
options (e.g. the test run of the same selection, when a run adds placebo draws beside it):
each taken record is marked ``reused_from``, the rest is computed (``at_probe.runs.reuse``). A
run made with other options is refused before anything is written, one whose model setup
(device, dtype, versions) differs from the one loaded here once the model is loaded, before
the manifest is written.

Usage:
    python analyses/xsum_eval.py --data ../shared/data/xsum-at-release --bucket 800 --limit 20 --out runs/smol800
    python analyses/xsum_eval.py ... --device cuda --ray-address auto --workers 8   # one GPU per actor
    python analyses/xsum_report.py runs/smol800
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

import at_probe
from at_probe.cli.args import (
    ArgumentParser,
    UsageError,
    add_fix_text_argument,
    add_sweep_arguments,
    check_summary_room,
    existing_dir,
    existing_file,
    model_name,
    name_list,
    output_dir,
    positive_int,
    prog,
    sweep_options,
    torch_device,
)
from at_probe.interventions import registry
from at_probe.models.loading import DEFAULT_MODEL, load_tokenizer, model_shape
from at_probe.runs.reuse import check_model_facts, check_source, reused_records
from at_probe.runs.runfiles import check_manifest, ensure_manifest, file_sha256, owned_run
from at_probe.runs.sweep import RecordSink, plan_units, run_units
from at_probe.xsum import (
    BUCKETS,
    SettingError,
    SummaryWorkerFactory,
    bucket_file,
    check_settings,
    is_heldout,
    load_records,
    parse_settings,
    placebo_draws,
    repair_note,
    setting_roles,
    text_repair_manifest,
)
from at_probe.xsum.metrics import ROUGE_TOKENIZERS
from at_probe.xsum.selection import choices_sha256, read_selection

DEFAULT_SETTINGS = "baseline;paper:alpha=1,beta=0.5,k=2;placebo:alpha=1,beta=0.5,k=2"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(prog="xsum_eval.py", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=model_name, default=DEFAULT_MODEL,
                   help="'smollm2' (default), 'tiny', a local HF Llama directory, or a hub id")
    p.add_argument("--data", type=existing_dir, default=Path("../shared/data/xsum-at-release"))
    p.add_argument("--bucket", choices=BUCKETS, default="800")
    p.add_argument("--split", choices=("heldout", "all"), default="heldout")
    p.add_argument("--limit", type=positive_int, default=None, help="first N documents of the split")
    chosen = p.add_mutually_exclusive_group()
    chosen.add_argument("--settings", default=DEFAULT_SETTINGS,
                        help="';'-separated settings (default %(default)s); kinds: baseline, "
                             f"{', '.join(registry.kinds())} (at_probe.interventions.registry)")
    chosen.add_argument("--selection", type=existing_file, default=None,
                        help="selection.json of xsum_select.py or alternatives_select.py: run its test_settings")
    p.add_argument("--roles", type=name_list, default=None,
                   help="with --selection: run only these roles (comma-separated, e.g. "
                        "paper_selected,placebo_selected); the report then compares only these")
    p.add_argument("--placebo-seeds", type=positive_int, default=1,
                   help="with --selection: draws of each placebo role (seeds 0..N-1, each drawn per document); "
                        "xsum_experiment.py pools them")
    p.add_argument("--max-new-tokens", type=positive_int, default=50)
    p.add_argument("--rouge-tokenizer", choices=ROUGE_TOKENIZERS, default="default",
                   help="'default': rouge-score's (ASCII only, comparable with the literature); 'unicode': "
                        "every script (at_probe.xsum.metrics)")
    add_fix_text_argument(p)
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--attention-rows", type=positive_int, default=None,
                   help="run attention over blocks of this many query rows (at_probe.chunked_attention): the same "
                        "summaries, NLLs within about 1e-6, in less time on long prompts; a run may resume with or "
                        "without it; each record notes it")
    p.add_argument("--reuse-records", type=existing_dir, default=None, metavar="RUN",
                   help="take the records this run plans (same documents and settings) from an earlier run "
                        "directory made with the same model, data, documents, batch size and generation and "
                        "scoring options; each is marked reused_from, the rest is computed")
    p.add_argument("--device", type=torch_device, default=None)
    p.add_argument("--out", type=output_dir, required=True, help="run directory")
    add_sweep_arguments(p)
    return p.parse_args(argv)


def test_roles(selection: dict[str, Any], only: list[str] | None, seeds: int
               ) -> tuple[dict[str, str], dict[str, list[str]]]:
    """(roles, placebo draws) of a test run: the selection's roles, or those of ``only``
    (``--roles``), and with ``seeds > 1`` each placebo role's settings for seeds 0..seeds-1."""
    roles = setting_roles(selection)
    if only:
        unknown = [r for r in only if r not in roles]
        if unknown:
            raise UsageError(f"argument --roles: {', '.join(unknown)} not among the selection's roles "
                           f"({', '.join(roles)})")
        roles = {r: s for r, s in roles.items() if r in only}
    draws = placebo_draws(roles, seeds, selection.get("profiles")) if seeds > 1 else {}
    if seeds > 1 and not draws:
        raise UsageError("argument --placebo-seeds: none of the chosen roles is a placebo")
    return roles, draws


def reuse_source(source: Path | None, config: dict[str, Any], out: Path) -> dict[str, Any] | None:
    """The manifest of the ``--reuse-records`` run, checked against this run's (``check_source``);
    None without the flag.

    Raises:
        UsageError: the source is ``--out``, holds no run, or was made with other options.
    """
    if source is None:
        return None
    try:
        return check_source(source, config, out)
    except (ValueError, OSError) as err:
        raise UsageError(f"argument --reuse-records: {err}") from None


def starter(out: Path, config: dict[str, Any], growth: dict[str, Any], sink: RecordSink,
            source: Path | None, theirs: dict[str, Any] | None, reused: list[dict[str, Any]]
            ) -> Callable[[dict[str, Any]], None]:
    """What runs once the model is loaded: refuse reused records of another model setup, write
    the manifest with the loaded model's facts, then adopt the reused records."""
    def start(described: dict[str, Any]) -> None:
        if reused:
            try:
                check_model_facts(source, theirs, described)
            except UsageError as err:
                raise UsageError(f"argument --reuse-records: {err}") from None
        ensure_manifest(out, {**config, **described}, **growth)
        sink.adopt(reused)
    return start


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.selection and args.split != "heldout":
            raise UsageError("--selection runs the held-out test documents only: drop --split all")
        options = sweep_options(args)
        data_file = bucket_file(args.data, args.bucket)
        selection = read_selection(args.selection, {
            "model": args.model, "bucket": args.bucket, "data_sha256": file_sha256(data_file),
            "max_new_tokens": args.max_new_tokens, "fix_text": args.fix_text}) if args.selection else None
        profiles = selection.get("profiles") if selection else None
        roles, draws = test_roles(selection, args.roles, args.placebo_seeds) if selection else ({}, {})
        if not selection and (args.roles or args.placebo_seeds > 1):
            raise UsageError(f"argument {'--roles' if args.roles else '--placebo-seeds'}: needs --selection "
                           "(it picks among the selection's roles)")
        names = [*roles.values(), *(s for d in draws.values() for s in d)] if selection else [args.settings]
        settings = parse_settings(";".join(dict.fromkeys(names)), profiles)
        # a bad --model or setting, or one that cannot run chunked: exit 2, nothing written
        shape = model_shape(args.model)
        check_settings(settings, shape, attention_rows=args.attention_rows)
        records = docs = load_records(data_file, fix_text=args.fix_text)
        if args.split == "heldout":
            docs = [d for d in docs if is_heldout(d["id"])]
        docs = docs[: args.limit]
        check_summary_room(load_tokenizer(args.model), shape, docs, args.max_new_tokens)
        if args.fix_text:
            print(repair_note(records, docs))
        config = {"model": args.model, "data_file": data_file.name, "data_sha256": file_sha256(data_file),
                  "bucket": args.bucket, "split": args.split,
                  **({"selection_sha256": file_sha256(args.selection),
                      "choices_sha256": choices_sha256(selection), "roles": roles}
                     if selection else {}),
                  # only when used, so that runs made before these options can still grow
                  **({"roles_subset": True} if args.roles else {}),
                  **({"placebo_draws": draws} if draws else {}),
                  "limit": args.limit, "settings": list(settings), "max_new_tokens": args.max_new_tokens,
                  "rouge_tokenizer": args.rouge_tokenizer, **text_repair_manifest(args.fix_text),
                  "batch_size": args.batch_size,
                  "at_probe_version": at_probe.__version__}
        theirs = reuse_source(args.reuse_records, config, args.out)  # before --out is created
    except (SettingError, UsageError, FileNotFoundError, ValueError, OSError) as err:
        print(f"{prog('xsum_eval.py')}: error: {err}", file=sys.stderr)
        return 2

    # a test run gains the roles a newer selection of the same choices adds (same choices_sha256)
    growth = {"growable": ("settings", "roles"), "follows_growth": ("selection_sha256",)} if selection else {}
    try:
        with owned_run(args.out):  # one driver; the manifest checked before records.jsonl is repaired
            check_manifest(args.out, config, **growth)
            sink = RecordSink(args.out / "records.jsonl")
            position = {str(d["id"]): i for i, d in enumerate(docs)}
            # document-major: a run stopped early holds whole documents (every setting) for a report
            plan = sorted(plan_units(list(settings), docs, args.batch_size), key=lambda u: position[u.doc_ids[0]])
            wanted = {(d, u.setting) for u in plan for d in u.doc_ids} - sink.done
            try:
                reused = reused_records(args.reuse_records, wanted) if theirs else []
            except UsageError as err:  # a corrupt line in the source's records
                raise UsageError(f"argument --reuse-records: {err}") from None
            units = sink.pending(plan, coming=[(r["doc_id"], r["setting"]) for r in reused])
            print(f"{len(docs)} documents x {len(settings)} settings: {len(sink.done)} done, "
                  + (f"{len(reused)} to take from {args.reuse_records}, " if theirs else "")
                  + f"{sum(len(u.docs) for u in units)} to go")
            factory = SummaryWorkerFactory(args.model, args.device, ";".join(settings), args.max_new_tokens,
                                           profiles, args.rouge_tokenizer, args.attention_rows)
            with tqdm(total=sum(len(u.docs) for u in units), desc="xsum", unit="summary") as bar:
                # written once the model is loaded (with its facts): a model that fails to load writes none
                run_units(units, factory, sink.write,
                          start=starter(args.out, config, growth, sink, args.reuse_records, theirs, reused),
                          progress=lambda unit: bar.update(len(unit.docs)), **options)
    except (UsageError, OSError) as err:  # another driver or run in --out, a reference that does not fit
        print(f"{prog('xsum_eval.py')}: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {sink.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
