"""Development profiling and sweep of the alternatives: emphasis, calibration, temperature.

Everything here uses development documents only (``int(id) % 4 != 0``); the test run of
``xsum_eval.py --selection OUT/selection.json`` uses the held-out ones. Two disjoint sets:

1. **Profiling** (the ``--profile-docs`` development documents after the first ``--docs``):
   * the position bias of ``PositionCalibration`` (``estimate_position_bias``: the final prompt
     token's attention density per document region and layer, one unedited pass per document);
   * PASTA's head profiling for ``EmphasisSteering``: each head steered alone (alpha 0.01),
     ranked by the change of the reference NLL averaged over the profiling documents, per
     target (``--targets``; ``--head-ranking-from`` reuses another run's ranking instead).
   Written to ``profile.jsonl`` (one line per document, resumable), then ``profiles.json``
   (reused as it is when the run is resumed), and kept in ``selection.json``.
   * the sink edits' head search (``sink_head_ranking``): each head alone scaled by rate 0.5 and
     by 2 (``sink_scaling``'s ``scale_down`` and ``scale_up``), and calibrated as ACT does
     (``calibration``, layers 2..L-2), ranked the same way.
   Only what the chosen ``--methods`` need is profiled.
2. **Sweep** (the first ``--docs`` development documents): baseline and the grid
   ``ALTERNATIVES_GRID`` of the ``--methods`` (default all: emphasis top 1/2/4/8/16 heads per
   target, calibration strength 0.25/0.5/1 and temperature 0.7/0.85/1.15/1.3 on the last half of
   the layers, sink scaling, ACT sink calibration, adaptive temperature, Ms-PoE) scored by
   ``summary_nll``, one forward pass each; per method the lowest mean is selected.

``--parts-of SELECTION`` (the ``selection.json`` of ``xsum_select.py`` on the same bucket) adds
the paper transition it selected, taken apart (``TRANSITION_PARTS``: each part alone, in pairs,
all three), as methods ``paper_<parts>`` of the test run, each with its placebo where it moves
mass; they are not swept (their setting is the selected one's).

``selection.json`` holds the choices (``selected``), every setting's mean NLL and paired
difference from the baseline (bootstrap 95% interval over documents), the profiles, and the
test run's settings and roles: baseline, each method's choice, and the placebos of emphasis
(``emphasis_placebo``: random heads in the same layers when the document is emphasised, a
random span of the same length for the instruction; ``emphasis_span_placebo``: the span, for
either target), calibration (the weights shuffled across regions) and the others that have one
(``docs/concepts.md``).

``--fix-text`` repairs the release's mojibake (ftfy) in documents and references, prints how many
documents it changed and is recorded in the manifest (off by default; the test run must match).

Usage:
    python analyses/alternatives_select.py --bucket 800 --out runs/alt-800
    python analyses/alternatives_select.py --bucket 800 --methods sink_scaling,multiscale_positions \\
        --parts-of runs/dev-800/selection.json --out runs/peers-800
    python analyses/alternatives_select.py --bucket 1900 --head-ranking-from runs/alt-800/selection.json \\
        --out runs/alt-1900
    python analyses/xsum_eval.py --bucket 800 --selection runs/alt-800/selection.json --out runs/alt-test-800
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

import at_probe
from at_probe.cli.args import (
    ArgumentParser,
    add_fix_text_argument,
    add_sweep_arguments,
    check_summary_room,
    existing_dir,
    existing_file,
    model_name,
    output_dir,
    positive_int,
    prog,
    sweep_options,
    torch_device,
)
from at_probe.flow.probe import DEFAULT_REGIONS
from at_probe.interventions import registry
from at_probe.interventions.emphasis import TARGETS
from at_probe.interventions.profiling import profile_heads, rank_heads
from at_probe.models.loading import DEFAULT_MODEL, load_tokenizer, model_shape
from at_probe.runs.choices import choice_message
from at_probe.runs.errors import UsageError
from at_probe.runs.runfiles import (
    append_jsonl,
    ensure_manifest,
    file_sha256,
    json_sha256,
    owned_run,
    read_jsonl,
    read_manifest,
    write_json_atomic,
)
from at_probe.runs.stats import describe
from at_probe.runs.sweep import RecordSink, plan_units, run_units
from at_probe.xsum import (
    ALTERNATIVES,
    ALTERNATIVES_GRID,
    BUCKETS,
    NLLWorkerFactory,
    bucket_file,
    check_settings,
    is_development,
    load_records,
    minus_baseline,
    parse_settings,
    prompt_limit,
    repair_note,
    run_settings,
    select_alternatives,
    setting_roles,
    text_repair_manifest,
)
from at_probe.xsum.selection import read_selection
from at_probe.xsum.settings import transition_parts


def emphasis_targets(text: str) -> list[str]:
    """An argparse type: a comma-separated list of emphasis targets (``at_probe.interventions.emphasis.TARGETS``)."""
    targets = list(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    if not targets or any(t not in TARGETS for t in targets):
        raise argparse.ArgumentTypeError(f"must name some of {', '.join(TARGETS)}, got {text!r}")
    return targets


def method_list(text: str) -> list[str]:
    """An argparse type: a comma-separated list of the methods of ``ALTERNATIVES_GRID``, in its order."""
    methods = {m.strip() for m in text.split(",") if m.strip()}
    unknown = sorted(methods - set(ALTERNATIVES))
    if not methods or unknown:
        raise argparse.ArgumentTypeError(choice_message("method", (unknown or [text])[0], ALTERNATIVES))
    return [m for m in ALTERNATIVES if m in methods]  # one order, whatever the order given


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(prog="alternatives_select.py", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model",
        type=model_name,
        default=DEFAULT_MODEL,
        help="'smollm2' (default), 'tiny', a local HF Llama directory, or a hub id",
    )
    p.add_argument("--data", type=existing_dir, default=Path("../shared/data/xsum-at-release"))
    p.add_argument("--bucket", choices=BUCKETS, default="800")
    p.add_argument(
        "--docs", type=positive_int, default=40, help="first N development documents: the sweep (default 40)"
    )
    p.add_argument(
        "--profile-docs",
        type=positive_int,
        default=4,
        help="the next N development documents: the profiling (default 4)",
    )
    p.add_argument("--methods", type=method_list, default=",".join(ALTERNATIVES),
                   help=f"methods to profile and sweep (default all: {','.join(ALTERNATIVES)})")
    p.add_argument("--parts-of", type=existing_file, default=None, metavar="SELECTION",
                   help="an xsum_select.py selection.json of this bucket: test its paper setting taken apart too")
    p.add_argument(
        "--regions", type=positive_int, default=None,
        help=f"document regions of calibration's position bias (default {DEFAULT_REGIONS})"
    )
    p.add_argument(
        "--targets",
        type=emphasis_targets,
        default=None,
        help="emphasis targets to profile and sweep (default: document,instruction)",
    )
    p.add_argument(
        "--head-ranking-from",
        type=existing_file,
        default=None,
        metavar="SELECTION",
        help="reuse the head ranking of another run's selection.json instead of profiling heads",
    )
    p.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=50,
        help="room kept after the prompt, as in the test run (prompts are cut the same way)",
    )
    add_fix_text_argument(p)
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--device", type=torch_device, default=None)
    p.add_argument("--out", type=output_dir, required=True, help="run directory")
    add_sweep_arguments(p)
    args = p.parse_args(argv)
    for flag, value, method in (("--regions", args.regions, "calibration"), ("--targets", args.targets, "emphasis")):
        if value is not None and method not in args.methods:
            p.error(f"argument {flag}: applies to {method}, which --methods leaves out")
    args.regions = DEFAULT_REGIONS if args.regions is None else args.regions
    args.targets = list(TARGETS) if args.targets is None else args.targets
    return args


def profile_head_deltas(
    model: Any, docs: list[dict[str, Any]], name: str, edit_for: Callable[[int, int], Any], path: Path,
    max_new_tokens: int, layers: Sequence[int] | None = None,
) -> dict[tuple[int, int], float]:
    """Each head edited alone (``profiling.profile_heads``), its NLL change averaged over ``docs``.

    One line per (profiling ``name``, document) in ``path``, appended as each document finishes;
    a re-run continues with the documents not yet profiled.
    """
    from at_probe.models.prompts import build_prompt, continuation_ids

    done = {r["doc_id"]: r["deltas"] for r in read_jsonl(path, repair=True) if r["target"] == name}
    n_heads = (int(model.cfg.n_layers) if layers is None else len(layers)) * int(model.cfg.n_heads)
    limit = prompt_limit(model, None, max_new_tokens)
    with (
        open(path, "a", encoding="utf-8") as fh,
        tqdm(total=len(docs) * n_heads, desc=f"heads ({name})", initial=len(done) * n_heads) as bar,
    ):
        for doc in docs:
            if str(doc["id"]) in done:
                continue
            prompt = build_prompt(model.tokenizer, doc["document"], max_tokens=limit)
            deltas = profile_heads(model, prompt, continuation_ids(model.tokenizer, doc["summary"]), edit_for,
                                   layers=layers, progress=bar.update)
            done[str(doc["id"])] = [[l, h, d] for (l, h), d in deltas.items()]
            append_jsonl(fh, [{"target": name, "doc_id": str(doc["id"]), "deltas": done[str(doc["id"])]}])
    per_doc = [{(l, h): d for l, h, d in done[str(doc["id"])]} for doc in docs]
    return {key: float(np.mean([p[key] for p in per_doc])) for key in per_doc[0]}


def head_profilings(methods: list[str], targets: list[str], n_layers: int
                    ) -> dict[str, dict[str, tuple[Callable[[int, int], Any], Sequence[int] | None]]]:
    """The head profilings the methods need: ``{profile: {ranking: (edit_for, layers)}}``
    (``head_ranking`` per emphasis target, ``sink_head_ranking`` per sink profiling)."""
    from at_probe.interventions import sink_calibration, sink_scaling
    from at_probe.interventions.emphasis import EmphasisSteering

    out: dict[str, dict[str, tuple[Callable[[int, int], Any], Sequence[int] | None]]] = {}
    if "emphasis" in methods:  # the class's alpha: PASTA's, the grid's
        out["head_ranking"] = {t: (lambda l, h, t=t: EmphasisSteering({l: (h,)}, target=t), None)
                               for t in targets}
    sinks = out.setdefault("sink_head_ranking", {})
    if "sink_scaling" in methods:
        for name, rate in sink_scaling.PROFILE_RATES.items():
            sinks[name] = (lambda l, h, r=rate: sink_scaling.SinkScaling(r, head_config={l: (h,)}), None)
    if "sink_calibration" in methods:
        sinks[sink_calibration.PROFILE_RANKING] = (
            lambda l, h: sink_calibration.SinkCalibration(head_config={l: (h,)}),
            sink_calibration.profiled_layers(n_layers))
    return {k: v for k, v in out.items() if v}


def profiling_edits(profilings: dict[str, dict[str, tuple[Callable[[int, int], Any], Sequence[int] | None]]],
                    n_layers: int) -> dict[str, dict[str, str]]:
    """What each head profiling does, for the manifest: ``{profile: {ranking: "Class(fields) on
    layers ..."}}`` (the edit of one head without its head, the layers profiled), so a run resumed
    or a ranking reused after a change of an edit's defaults (a profiling rate, ACT's beta) is
    refused instead of mixing deltas of two edits."""
    out: dict[str, dict[str, str]] = {}
    for profile, names in profilings.items():
        for name, (edit_for, layers) in names.items():
            edit = edit_for(layers[0] if layers else 0, 0)
            fields = ", ".join(f"{f.name}={getattr(edit, f.name)!r}" for f in dataclasses.fields(edit)
                               if f.name != "head_config")
            span = "all layers" if layers is None else f"layers {layers[0]}-{layers[-1]}"
            out.setdefault(profile, {})[name] = f"{type(edit).__name__}({fields}) on {span}"
    return out


def check_rankings_fit(settings: Sequence[str], profilings: dict[str, Any], shape: Any) -> None:
    """Build the settings that read a head ranking against rankings of the size the profiling
    will give (every head of its layers), so a ``top`` larger than a ranking fails at once, not
    after hours of profiling.

    Raises:
        SettingError: a setting that cannot be built or does not fit the model.
    """
    n_heads = int(shape.cfg.n_heads)
    sized = {profile: {name: [{"layer": l, "head": h, "delta": 0.0}
                              for l in (range(int(shape.cfg.n_layers)) if layers is None else layers)
                              for h in range(n_heads)]
                       for name, (_, layers) in names.items()}
             for profile, names in profilings.items()}
    reads = [s for s in settings if s != "baseline" and registry.method(s.split(":")[0]).profile in sized]
    if reads:
        check_settings(parse_settings(";".join(reads), sized), shape)


def build_profiles(args: argparse.Namespace, docs: list[dict[str, Any]], profilings: dict[str, Any],
                   edits: dict[str, dict[str, str]]) -> dict[str, Any]:
    """What the methods need from the profiling documents: the position bias (calibration) and
    the head rankings (``head_profilings``; reused from ``--head-ranking-from`` when given)."""
    from at_probe.interventions.calibration import estimate_position_bias
    from at_probe.models.loading import load_model
    from at_probe.models.prompts import build_prompts

    source = None  # a reused ranking is checked before anything is computed
    if args.head_ranking_from is not None:
        rankings, source = reused_ranking(args.head_ranking_from, args.model, profilings, edits)
    model = load_model(args.model, device=args.device)
    profiles: dict[str, Any] = {}
    if "calibration" in args.methods:
        prompts = build_prompts(model.tokenizer, [d["document"] for d in docs],
                                max_tokens=prompt_limit(model, None, args.max_new_tokens))
        with tqdm(total=len(prompts), desc="position bias") as bar:
            bias = estimate_position_bias(model, prompts, regions=args.regions, progress=bar.update)
        profiles["position_bias"] = bias.to_json()
    if args.head_ranking_from is None:
        rankings = {profile: {name: rank_heads(profile_head_deltas(model, docs, name, edit_for,
                                                                   args.out / "profile.jsonl",
                                                                   args.max_new_tokens, layers))
                              for name, (edit_for, layers) in names.items()}
                    for profile, names in profilings.items()}
    return {**profiles, **rankings, "profile_documents": [str(d["id"]) for d in docs],
            "head_ranking_source": source}


def reused_ranking(path: Path, model: str, profilings: dict[str, Any], edits: dict[str, dict[str, str]]
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The head rankings ``profilings`` names, from another alternatives run, checked (same model,
    development documents, the same profiling ``edits`` where its manifest records them: runs
    before ``profiling_edits`` do not), and where they came from (path, sha256, bucket, the
    documents they were profiled on)."""
    try:
        selection = json.loads(path.read_text())
        manifest = json.loads((path.parent / "manifest.json").read_text())
        profiles = selection["profiles"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise UsageError(f"--head-ranking-from: {path} is not the selection.json of an alternatives_select.py "
                         f"run: {err!r}") from None
    if manifest.get("split") != "development" or manifest.get("model") != model:
        raise UsageError(f"--head-ranking-from: {path} was profiled with model {manifest.get('model')!r} on "
                         f"split {manifest.get('split')!r}, not on development documents with {model!r}")
    missing = [f"{p}[{n!r}]" for p, names in profilings.items() for n in names if n not in profiles.get(p, {})]
    if missing:
        raise UsageError(f"--head-ranking-from: {path} has no head ranking {', '.join(missing)} (profiled "
                         "for other --methods, or by an older at_probe)")
    theirs = manifest.get("head_profilings") or {}
    changed = [f"{p}[{n!r}]" for p, names in profilings.items() for n in names
               if n in theirs.get(p, {}) and theirs[p][n] != edits[p][n]]
    if changed:
        raise UsageError(f"--head-ranking-from: {path} profiled {', '.join(changed)} with another edit than "
                         "this at_probe's (see head_profilings in its manifest.json); profile again")
    source = {"path": str(path), "sha256": file_sha256(path), "bucket": manifest.get("bucket"),
              "profile_documents": profiles.get("profile_documents")}
    return {p: {n: profiles[p][n] for n in names} for p, names in profilings.items()}, source


def parts_of(path: Path, expected: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    """The paper setting an ``xsum_select.py`` selection chose, taken apart (``transition_parts``),
    and where it came from (path, sha256, the setting).

    Raises:
        UsageError: not such a selection, or one made for another model, bucket or data file.
    """
    try:
        selection = read_selection(path, expected)
        if "paper" not in selection:
            raise UsageError(f"{path} is not an xsum_select.py selection (it chose no paper setting)")
        parts = transition_parts(selection["paper"])
    except ValueError as err:  # UsageError and SettingError: the flag named
        raise UsageError(f"--parts-of: {err}") from None
    return parts, {"path": str(path), "sha256": file_sha256(path), "paper": parts["paper_all"]}


def sweep_settings(targets: list[str], methods: Sequence[str] = ALTERNATIVES) -> list[str]:
    """Baseline and the grid of ``methods``, emphasis restricted to the profiled targets."""
    grid = [
        s
        for method in methods
        for s in ALTERNATIVES_GRID[method]
        if not s.startswith("emphasis:") or any(f"target={t}," in s for t in targets)
    ]
    return ["baseline", *grid]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        targets = args.targets
        options = sweep_options(args)
        data_file = bucket_file(args.data, args.bucket)
        records = load_records(data_file, fix_text=args.fix_text)
        development = [d for d in records if is_development(d["id"])]
        docs, profile_docs = development[: args.docs], development[args.docs : args.docs + args.profile_docs]
        if args.fix_text:
            print(repair_note(records, docs + profile_docs))
        if len(profile_docs) < args.profile_docs:
            raise ValueError(
                f"the bucket has {len(development)} development documents, fewer than "
                f"--docs + --profile-docs = {args.docs + args.profile_docs}"
            )
        settings = sweep_settings(targets, args.methods)
        shape = model_shape(args.model)  # a bad --model: exit 2 before the directory exists
        profilings = head_profilings(args.methods, targets, shape.cfg.n_layers)
        if args.head_ranking_from is not None and not profilings:
            raise UsageError(f"--head-ranking-from: --methods {','.join(args.methods)} use no head ranking")
        check_rankings_fit(settings, profilings, shape)  # a top too large: before any profiling
        tokenizer = load_tokenizer(args.model)
        check_summary_room(tokenizer, shape, docs, args.max_new_tokens)
        if "calibration" in args.methods:  # the position bias splits each profiling prompt into --regions
            check_summary_room(tokenizer, shape, profile_docs, args.max_new_tokens, regions=args.regions)
        edits = profiling_edits(profilings, shape.cfg.n_layers)
        parts, parts_source = ({}, None) if args.parts_of is None else parts_of(args.parts_of, {
            "model": args.model, "bucket": args.bucket, "data_sha256": file_sha256(data_file),
            "max_new_tokens": args.max_new_tokens, **text_repair_manifest(args.fix_text)})
        config = {
            "model": args.model,
            "data_file": data_file.name,
            "data_sha256": file_sha256(data_file),
            "bucket": args.bucket,
            "split": "development",
            "documents": [str(d["id"]) for d in docs],
            "profile_documents": [str(d["id"]) for d in profile_docs],
            "regions": args.regions,
            "methods": args.methods,
            "targets": targets,
            "settings": settings,
            # the setting taken apart, not the file: a refreshed selection of the same choice resumes
            "parts_of": None if parts_source is None else parts_source["paper"],
            "max_new_tokens": args.max_new_tokens,
            "batch_size": args.batch_size,
            "metric": "summary_nll",
            **text_repair_manifest(args.fix_text),
            # the reused ranking itself, not its file's bytes: a refreshed file of the same ranking resumes
            "head_ranking_from": (
                json_sha256(reused_ranking(args.head_ranking_from, args.model, profilings, edits)[0])
                if args.head_ranking_from else None
            ),
            # what each ranking's profiling edits: a change of an edit's defaults is a different run
            "head_profilings": edits,
            "at_probe_version": at_probe.__version__,
        }
    except (FileNotFoundError, ValueError, OSError, KeyError) as err:  # bad input: nothing written
        print(f"{prog('alternatives_select.py')}: error: {err}", file=sys.stderr)
        return 2
    try:
        # one driver; the manifest (which profile.jsonl and profiles.json belong to) checked first
        with owned_run(args.out):
            ensure_manifest(args.out, config)
            profiles_path = args.out / "profiles.json"
            if profiles_path.is_file():
                profiles = read_manifest(profiles_path)  # a corrupt file: exit 2, naming it
            else:
                profiles = build_profiles(args, profile_docs, profilings, edits)
                write_json_atomic(profiles_path, profiles)
            built = parse_settings(";".join(settings), profiles)  # canonical; all build before any work
            check_settings(built, shape)
            settings = list(built)
            sink = RecordSink(args.out / "sweep.jsonl")
            units = sink.pending(plan_units(settings, docs, args.batch_size))
            factory = NLLWorkerFactory(args.model, args.device, args.max_new_tokens, ";".join(settings),
                                       profiles)
            with tqdm(
                total=len(docs) * len(settings), initial=len(sink.done), desc="dev sweep", unit="score"
            ) as bar:
                run_units(units, factory, sink.write, progress=lambda unit: bar.update(len(unit.docs)),
                          **options)
            selection = select_alternatives(sink.records, args.methods)
            selection["selected"].update(parts)  # the transition's parts: chosen with its setting
            selection["minus_baseline"] = minus_baseline(sink.records, [str(d["id"]) for d in docs])
            selection["profiles"] = profiles
            if parts_source is not None:
                selection["parts_of"] = parts_source
            selection["test_settings"] = run_settings(selection)
            selection["roles"] = setting_roles(selection)
            write_json_atomic(args.out / "selection.json", selection)
    except (UsageError, OSError) as err:  # another driver or run in --out, a reference that does not fit
        print(f"{prog('alternatives_select.py')}: error: {err}", file=sys.stderr)
        return 2
    for method, name in selection["selected"].items():
        swept = selection["minus_baseline"].get(name)
        print(f"{method}: {name}  " + (f"{describe(swept)} nats vs baseline" if swept else
                                       "(a part of the selected paper setting, not swept)"))
    print(f"wrote {args.out / 'selection.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
