"""``flow.py --docs N``: the corpus mode of ``at_probe.cli.flow`` (per-document measures over
many documents, resumable, then means and paired differences with intervals) and its
``--report-only`` rerun of the report."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from typing import Any

from tqdm.auto import tqdm

import at_probe
from at_probe.cli.args import (
    UsageError,
    check_prompts,
    prog,
)
from at_probe.interventions.registry import placebo_pairs
from at_probe.models.loading import load_tokenizer, model_shape
from at_probe.runs.runfiles import (
    check_manifest,
    ensure_manifest,
    file_sha256,
    owned_run,
    read_manifest,
    write_json_atomic,
)
from at_probe.runs.sweep import RecordSink, plan_units, run_units
from at_probe.xsum import (
    is_heldout,
    load_records,
    repair_note,
    text_repair_manifest,
)


def corpus_documents(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The first ``--docs`` records of ``--xsum``'s split."""
    if args.xsum is None:
        raise UsageError("--docs needs --xsum FILE")
    if args.knockout:
        raise UsageError("corpus mode runs no knockout (one pass per region and band per document); "
                         "drop --knockout or use --index for one document")
    if args.selection is not None and args.split != "heldout":
        raise UsageError("--selection runs the held-out documents only (its settings were chosen on the others): "
                         "drop --split all")
    if args.selection is not None and args.attribution:
        raise UsageError("--attribution (the causal map) runs for the transitions only: drop it with --selection")
    try:
        release = records = load_records(args.xsum, fix_text=args.fix_text)
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from None
    if args.split == "heldout":
        records = [r for r in records if is_heldout(r["id"])]
    if len(records) < args.docs:
        print(f"notice: {args.xsum} has {len(records)} {args.split} documents, fewer than --docs {args.docs}")
    if args.fix_text:
        print(repair_note(release, records[: args.docs]))
    return records[: args.docs]


def check_corpus_prompts(args: argparse.Namespace, docs: list[dict[str, Any]], shape: Any) -> None:
    """Corpus mode's prompts built and split as its workers will (``check_prompts``).

    Raises:
        UsageError: ``--max-tokens`` leaves no room, or a document too short for ``--regions``.
    """
    from at_probe.flow.corpus import document_prompt

    tokenizer = load_tokenizer(args.model)
    with_reference = bool(args.attribution)  # the causal map scores the reference after the prompt
    def build(doc: dict[str, Any]) -> Any:
        return document_prompt(tokenizer, doc, shape.n_ctx, args.max_tokens, with_reference)[0]

    check_prompts(docs, build, room_flag="--max-tokens", regions=args.regions)


def attribution_band(args: argparse.Namespace, model_name: str) -> int:
    """Layers per band of the corpus causal map: a third of the model's layers (as the
    single-document default), read from its config without loading the weights."""
    return -(-model_shape(model_name).n_layers // 3)


def run_corpus(args: argparse.Namespace, conditions: dict[str, Any], docs: list[dict[str, Any]],
               options: dict[str, Any]) -> int:
    """Corpus mode: per-document measures appended to ``docs.jsonl`` (resumable), then means,
    paired differences with intervals, figures and the headline contrasts."""
    from at_probe.flow import corpus

    started = time.time()
    manifest = {"model": args.model, "xsum": args.xsum.name, "xsum_sha256": file_sha256(args.xsum),
                "split": args.split, "regions": args.regions, "max_tokens": args.max_tokens,
                "conditions": {name: repr(tr) for name, tr in conditions.items()},
                "attribution": bool(args.attribution), "at_probe_version": at_probe.__version__,
                **text_repair_manifest(args.fix_text),
                **({"selection": str(args.selection), "selection_sha256": file_sha256(args.selection)}
                   if args.selection is not None else {})}
    band = attribution_band(args, args.model) if args.attribution else 0
    # one driver; the manifest checked before docs.jsonl is repaired (errors: main's exit 2)
    with owned_run(args.out):
        check_manifest(args.out, manifest)
        sink = RecordSink(args.out / "docs.jsonl", key=lambda r: (r["doc_id"], ""))
        units = sink.pending(plan_units([""], docs, 1))
        print(f"{len(docs)} documents x {len(conditions)} conditions: {len(docs) - len(units)} done, "
              f"{len(units)} to go")
        factory = corpus.FlowWorkerFactory(args.model, args.device, conditions, args.regions, args.max_tokens,
                                           band, args.attention_rows)
        with tqdm(total=len(units), desc="documents", unit="doc") as bar:
            run_units(units, factory, sink.write, start=lambda described: ensure_manifest(args.out, {
                **manifest, "prompt_style": described["prompt_style"]}), progress=lambda unit: bar.update(),
                **options)
        report_corpus(args, conditions, docs, sink.records, started)
    return 0


def report_corpus(args: argparse.Namespace, conditions: dict[str, Any], docs: list[dict[str, Any]],
                  records: list[dict[str, Any]], started: float, seconds: float | None = None) -> None:
    """Corpus mode's outputs from the per-document records: means, paired differences with
    intervals, figures, ``corpus.json`` and the headline contrasts (with ``--attribution``, also
    the causal map's: ``causal_map``). ``seconds``: the run's time to record instead of this
    call's (``--report-only`` keeps the run's)."""
    import pandas as pd

    from at_probe.flow import corpus
    from at_probe.runs.plotting import PLOTS, save_figure

    done = {r["doc_id"]: r for r in records}
    cut = [d for d, r in done.items() if r.get("dropped_tokens")]
    if cut:
        print(f"notice: {len(cut)} documents were truncated to fit the prompt limit "
              "(dropped_tokens in docs.jsonl)")
    wanted = {str(d["id"]) for d in docs}
    frame = pd.DataFrame([row for doc_id, r in done.items() if doc_id in wanted
                          for row in corpus.unpack_record(r)])
    summary = corpus.summarise(frame)
    summary.to_csv(args.out / "corpus_summary.csv", index=False)
    diffs = summary[summary.kind == "difference"]
    for name, part in (("corpus_profile_diff", diffs[diffs.measure == "final_token_profile"]),
                       ("corpus_value_profile_diff", diffs[diffs.measure == "final_token_value_profile"]),
                       ("corpus_layer_measures_diff", diffs[diffs.measure.isin(corpus.LAYER_MEASURES)]),
                       ("corpus_attribution_diff", diffs[diffs.measure == "attribution_nll"])):
        if len(part):  # no figure of differences for a baseline-only run
            save_figure(PLOTS[name](part), args.out, name, part)
    names = list(conditions)
    contrasts = [(c, "baseline") for c in names if c != "baseline"] + placebo_contrasts(names)
    headline = [corpus.paired_contrast(frame, f"{corpus.EARLY_DEEP}:{m}", a, b)
                for m in corpus.PROFILES for a, b in contrasts]
    manifest = json.loads((args.out / "manifest.json").read_text())
    n_layers = model_shape(manifest["model"]).n_layers
    causal = corpus.early_document_attribution(frame, contrasts, n_layers=n_layers)
    words = corpus.plain_words(summary)
    write_json_atomic(args.out / "corpus.json", {
        "manifest": manifest, "documents": sorted(wanted & set(done)),
        "headline": headline, **({"causal_map": causal} if causal else {}),
        "findings": words, "seconds": round(time.time() - started if seconds is None else seconds, 1)})
    print("Final-token mass on the first half of the document, deep layers (paired, 95% CI):")
    for h in headline:
        print(f"  {h['measure'].split(':')[1]:<26} {h['contrast']:<20} {corpus.interval_words(h)}")
    if causal:
        print(f"Causal map: estimated change of the reference NLL (nats/token) if {causal['regions'][0]} .. "
              f"{causal['regions'][-1]} were knocked out, summed over those regions (paired, 95% CI):")
        for band in causal["bands"]:
            layers = "layers {}-{}".format(*band["layers"])
            for name, est in [*band["means"].items(), *((e["contrast"], e) for e in band["contrasts"])]:
                print(f"  {layers:<14} {name:<20} {corpus.interval_words(est)}")
    print("\n".join(words))
    print(f"wrote {args.out}/corpus.json, corpus_summary.csv and figures ({time.time() - started:.0f} s)")


def placebo_contrasts(names: list[str]) -> list[tuple[str, str]]:
    """``(method, its placebo)`` pairs among a run's conditions.

    Conditions named by role (``paper``/``placebo``, ``emphasis``/``emphasis_placebo`` and
    ``emphasis_span_placebo``, ...) pair by name; conditions named by canonical setting
    (``flow.py --settings``) pair when the registry makes one the other's placebo twin: the
    twin's kind with the method's keys, plus the twin's own (``seed``, ``placebo``).
    """
    pairs = [("paper", "placebo")] if "paper" in names and "placebo" in names else []
    pairs += [(re.sub(r"(_span)?_placebo$", "", c), c) for c in names
              if c.endswith("_placebo") and ":" not in c and re.sub(r"(_span)?_placebo$", "", c) in names]
    pairs += placebo_pairs([c for c in names if ":" in c])
    return pairs


def report_only(args: argparse.Namespace) -> int:
    """``--report-only``: the corpus run in ``--out`` reported again from its files (every
    document of ``docs.jsonl``, the conditions of ``manifest.json``), no model loaded, so that
    numbers added to the report later come from the committed per-document measures. The run's
    recorded time (``seconds`` of its ``corpus.json``) is kept."""
    started = time.time()
    if not ((args.out / "manifest.json").is_file() and (args.out / "docs.jsonl").is_file()):
        print(f"{prog('flow.py')}: error: argument --out: {args.out} holds no corpus run (manifest.json and "
              "docs.jsonl)", file=sys.stderr)
        return 2
    try:
        with owned_run(args.out):  # no driver may append to docs.jsonl meanwhile
            try:
                conditions = dict.fromkeys(read_manifest(args.out / "manifest.json")["conditions"])
                records = RecordSink(args.out / "docs.jsonl", key=lambda r: (r["doc_id"], "")).records
                previous = args.out / "corpus.json"
                seconds = read_manifest(previous).get("seconds") if previous.is_file() else None
            except (KeyError, TypeError) as err:  # JSON, but not a corpus run's
                raise UsageError(f"{args.out} is not a corpus run ({type(err).__name__}: {err})") from None
            report_corpus(args, conditions, [{"id": r["doc_id"]} for r in records], records, started, seconds)
    except (UsageError, OSError) as err:  # a bug in the report keeps its traceback
        print(f"{prog('flow.py')}: error: argument --out: {err}", file=sys.stderr)
        return 2
    return 0
