"""Information flow from the context to the point of generation, with and without the transition.

For one document (the built-in sample by default, or ``--text`` / ``--xsum --index``), the
summarisation prompt (``at_probe.models.prompts``: one chat turn for a chat model such as the default
SmolLM2, the paper's plain prompt for a base model) is run once per condition (baseline, the
transition, and the placebo control whenever the paper version runs) with a ``FlowProbe``
attached after the transition's hooks, so the probe sees the pattern the model actually uses. Regions follow the
prompt's parts: the sink (token 0), the rest of the template head, ``--regions`` document
regions (``doc 01`` ..) and the instruction with the template tail. Each region is also knocked
out in bands of layers to measure causal transfer (``--knockout``, three bands by default).

Outputs in ``--out`` (default ``out/flow``): ``flow.json`` (every number, the arguments and
versions), and PNG figures each with the CSV of the data it plots: ``final_token_profile``,
``region_mass`` (baseline) and ``region_mass_diff`` (transition - baseline), ``layer_measures``,
``knockout`` and, with ``--rollout``, ``rollout``. A summary table is printed. Memory: the
probe reduces each layer's pattern inside its hook; only ``--rollout`` keeps one head-averaged
``T x T`` map per layer (``4 L T^2`` bytes) until the end of the pass; ``--attribution``
differentiates one block at a time (``at_probe.flow.attribution``).

Corpus mode (``--xsum FILE --docs N``) runs every condition on N documents, one unit of work
per document (``at_probe.runs.sweep``: resumable ``docs.jsonl``; ``--workers`` / ``--ray-address``
spread the documents over Ray actors), then reports means and paired differences with
bootstrap intervals. ``--fix-text`` repairs the mojibake of ``--xsum``'s release (ftfy) in
documents and references and prints how many documents it changed (recorded in the manifest).

With ``--selection RUN/selection.json`` (of ``alternatives_select.py``), corpus mode runs the
alternatives that selection chose instead of the transition: emphasis, calibration and
temperature, the placebos of the first two, and the baseline.

With ``--settings`` (``xsum_eval.py``'s grammar: ``;``-separated setting strings of any
registered method, ``at_probe.interventions.registry``), the baseline and those settings run
instead of the transition, each condition named by its canonical setting name.

Usage:
    python analyses/flow.py                              # SmolLM2, sample document, baseline vs paper vs placebo
    python analyses/flow.py --xsum ../shared/data/xsum-at-release/token_1900_evaluation.json.gz --index 3
    python analyses/flow.py --model tiny --knockout 0    # the embedded tiny model, no knockout (seconds)
    python analyses/flow.py --model huggyllama/llama-7b --text doc.txt --transition both --out out/llama
    python analyses/flow.py --xsum ../shared/data/xsum-at-release/token_800_evaluation.json.gz --docs 20 --workers 2
    python analyses/flow.py --report-only --out figures/flow-smollm2/800-causal   # the report again, no model
    python analyses/flow.py --model tiny --knockout 0 --settings "temperature:tau=0.8;paper:k=3"
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

import at_probe
from at_probe.cli.args import (
    ArgumentParser,
    UsageError,
    add_fix_text_argument,
    add_sweep_arguments,
    existing_file,
    model_name,
    nonnegative_float,
    nonnegative_int,
    output_dir,
    positive_float,
    positive_int,
    prog,
    sweep_options,
    torch_device,
)
from at_probe.cli.flow_corpus import check_corpus_prompts, corpus_documents, report_only, run_corpus
from at_probe.flow.attribution import attribution_sweep
from at_probe.flow.knockout import KnockoutResult, knockout_sweep
from at_probe.flow.probe import DEFAULT_REGIONS, FlowResult, probe_pass
from at_probe.interventions import registry
from at_probe.interventions.transition import PaperTransition, PlaceboTransition, SRATransition
from at_probe.models.loading import DEFAULT_MODEL, SAMPLE_DOCUMENT, load_model, model_shape
from at_probe.models.prompts import Prompt, build_prompt, continuation_ids
from at_probe.runs.memory import release_freed_memory
from at_probe.runs.runfiles import file_sha256, owned_run, write_json_atomic
from at_probe.xsum import (
    SettingError,
    check_settings,
    load_records,
    parse_setting,
    parse_settings,
    repair_note,
    setting_roles,
)
from at_probe.xsum.selection import read_selection

SAMPLE_SUMMARY = SAMPLE_DOCUMENT.with_name("sample_summary.txt")
PAPER_FLAGS = ("--alpha", "--beta", "--k", "--no-placebo", "--seed")
SRA_FLAGS = ("--sra-begin-length", "--sra-threshold-len", "--sra-elimi-inter", "--sra-elimi-outer",
             "--sra-strengthen-inter", "--sra-strengthen-outer")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(prog="flow.py", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=model_name, default=DEFAULT_MODEL,
                   help="'smollm2' (default), 'tiny', a local HF Llama directory, or a hub id")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text", type=existing_file, help="a UTF-8 text file with the document")
    src.add_argument("--xsum", type=existing_file, help="an XSum release file (.json or .json.gz)")
    p.add_argument("--index", type=nonnegative_int, default=0, help="record index in --xsum (default 0)")
    add_fix_text_argument(p)
    p.add_argument("--docs", type=positive_int, default=None, metavar="N",
                   help="corpus mode: the first N documents of --xsum's split, means and paired differences "
                        "with bootstrap intervals (resumable; no knockout)")
    p.add_argument("--split", choices=("heldout", "all"), default="heldout",
                   help="corpus mode: held-out documents (int(id) %% 4 == 0, default) or all")
    p.add_argument("--report-only", action="store_true",
                   help="corpus mode: rewrite the report (corpus_summary.csv, figures, corpus.json) of the "
                        "run in --out from its docs.jsonl and manifest, without a model; takes no other flag")
    p.add_argument("--regions", type=positive_int, default=DEFAULT_REGIONS,
                   help=f"document regions (default {DEFAULT_REGIONS})")
    p.add_argument("--transition", choices=("none", "paper", "sra", "both"), default="paper")
    chosen = p.add_mutually_exclusive_group()
    chosen.add_argument("--selection", type=existing_file, default=None, metavar="SELECTION",
                        help="corpus mode: instead of --transition, the baseline and the settings an "
                             "alternatives_select.py selection.json chose (emphasis, calibration, temperature "
                             "and their placebos; the selection must be made for --model and --xsum's file)")
    chosen.add_argument("--settings", default=None, metavar="SETTINGS",
                        help="instead of --transition, the baseline and these settings (xsum_eval.py's "
                             "grammar, ';'-separated, e.g. 'paper:k=3;temperature:tau=0.8'); kinds: "
                             f"{', '.join(registry.kinds())}")
    # defaults are the classes' own (PaperTransition, SRAParams): stated once, with their sources
    p.add_argument("--alpha", type=positive_float, default=PaperTransition.alpha,
                   help="paper: threshold factor (default %(default)s)")
    p.add_argument("--beta", type=nonnegative_float, default=PaperTransition.beta,
                   help="paper: share of freed mass moved (default %(default)s)")
    p.add_argument("--k", type=positive_int, default=PaperTransition.intervals_per_layer,
                   help="paper: intervals per layer (default %(default)s)")
    p.add_argument("--no-placebo", action="store_true", help="skip the placebo control of the paper version")
    for flag, field, kind in (("begin-length", "begin_length", nonnegative_int),
                              ("threshold-len", "threshold_len", nonnegative_int),
                              ("elimi-inter", "elimi_factor_inter", positive_float),
                              ("elimi-outer", "elimi_factor_outer", positive_float),
                              ("strengthen-inter", "strengthen_factor_inter", nonnegative_float),
                              ("strengthen-outer", "strengthen_factor_outer", nonnegative_float)):
        p.add_argument(f"--sra-{flag}", type=kind, default=getattr(SRATransition, field),
                       help=f"SRA: {field} (default %(default)s, the authors' code)")
    p.add_argument("--knockout", type=nonnegative_int, default=None, metavar="BAND",
                   help="knock out each region in bands of BAND layers, at most the model's layers "
                        "(default: three bands; 0 disables)")
    p.add_argument("--attribution", action="store_true",
                   help="also estimate every knockout's change of the reference NLL from one forward and one "
                        "backward pass (attribution patching), in the same bands; compared with exact knockout")
    p.add_argument("--rollout", action="store_true",
                   help="also compute attention rollout (keeps [layer, T, T] head-averaged maps)")
    p.add_argument("--max-tokens", type=positive_int, default=None,
                   help="truncate the prompt to this many tokens (default: the model's context)")
    p.add_argument("--attention-rows", type=positive_int, default=None,
                   help="run attention over blocks of this many query rows (at_probe.chunked_attention: the same "
                        "numbers without a T x T pattern per layer, for the whole context; not with --rollout)")
    p.add_argument("--out", type=output_dir, default=Path("out/flow"))
    p.add_argument("--device", type=torch_device, default=None)
    p.add_argument("--seed", type=nonnegative_int, default=0, help="placebo seed (default 0)")
    add_sweep_arguments(p)
    args = p.parse_args(argv)
    check_flags(p, args, p.given(argv))
    return args


def check_flags(p: ArgumentParser, args: argparse.Namespace, given: frozenset[str]) -> None:
    """Refuse (exit 2, naming the flag) a flag that the other flags would silently ignore."""
    if args.report_only:  # the run's manifest holds its configuration
        p.refuse(given, sorted(given - {"--report-only", "--out"}), "is not used with --report-only")
    if args.xsum is None or args.docs is not None:
        p.refuse(given, ("--index",), "picks one record of --xsum: give --xsum FILE without --docs")
    if args.xsum is None:
        p.refuse(given, ("--fix-text",), "repairs the text of an XSum release: add --xsum FILE")
    if args.docs is None:
        p.refuse(given, ("--split",), "chooses the documents of corpus mode: add --xsum FILE --docs N")
    else:
        p.refuse(given, ("--rollout",), "runs in single-document mode only: drop --docs")
    if args.attention_rows is not None:
        p.refuse(given, ("--rollout",), "keeps whole [layer, T, T] maps, which chunked attention (--attention-rows) "
                                        "never forms")
    if args.no_placebo:
        p.refuse(given, ("--seed",), "seeds the placebo, which --no-placebo skips")
    if args.selection is not None or args.settings is not None:
        instead = "--selection the selection's" if args.settings is None else "--settings those"
        p.refuse(given, ("--transition", *PAPER_FLAGS, *SRA_FLAGS),
                 f"sets up a transition; with {instead} settings run instead")
    else:
        unused = f"is not used with --transition {args.transition}"
        if args.transition not in ("paper", "both"):
            p.refuse(given, PAPER_FLAGS, f"sets up the paper version, which {unused}")
        if args.transition not in ("sra", "both"):
            p.refuse(given, SRA_FLAGS, f"sets up the SRA version, which {unused}")


def read_document(args: argparse.Namespace) -> tuple[str, str | None, str]:
    """(document, reference summary or None, description)."""
    if args.text is not None:
        return args.text.read_text(encoding="utf-8"), None, str(args.text)
    if args.xsum is not None:
        try:
            records = load_records(args.xsum, fix_text=args.fix_text)
        except (FileNotFoundError, ValueError) as err:
            raise UsageError(str(err)) from None
        if not 0 <= args.index < len(records):
            raise UsageError(f"--index {args.index} is outside 0..{len(records) - 1} for {args.xsum}")
        rec = records[args.index]
        if args.fix_text:
            print(repair_note(records, [rec]))
        return rec["document"], rec.get("summary"), f"{args.xsum}#{args.index} (id {rec['id']})"
    return SAMPLE_DOCUMENT.read_text(), SAMPLE_SUMMARY.read_text().strip(), "built-in sample document"


def make_prompt(model: Any, document: str, reference: str | None,
                max_tokens: int | None = None) -> tuple[Prompt, torch.Tensor | None]:
    """The summarisation prompt (document cut, with a notice, to fit) and the reference's ids."""
    ref = continuation_ids(model.tokenizer, reference) if reference else []
    limit = min(int(model.cfg.n_ctx) - len(ref), max_tokens or int(model.cfg.n_ctx))
    try:
        prompt = build_prompt(model.tokenizer, document, max_tokens=limit)
    except ValueError as err:
        flag = "argument --max-tokens: " if max_tokens == limit else ""
        raise UsageError(f"{flag}{err}") from None
    if prompt.dropped:
        print(f"notice: the document was truncated by {prompt.dropped} tokens so the prompt fits in {limit} "
              f"tokens (model context {model.cfg.n_ctx}; instruction, template and reference kept)")
    ref_tokens = torch.tensor([ref], device=model.cfg.device) if ref else None
    return prompt, ref_tokens


def selection_conditions(path: Path, expected: dict[str, Any]) -> dict[str, Any]:
    """Condition name -> intervention from an alternatives selection: ``baseline`` and each
    role's setting (``emphasis``, ``emphasis_placebo``, ``calibration``, ...), each setting once.

    Raises:
        UsageError: not an alternatives selection, or one made for another value of a key of
            ``expected`` (``at_probe.xsum.selection.read_selection``).
    """
    selection = read_selection(path, expected)
    if "selected" not in selection:
        raise UsageError(f"{path} selects transitions: use --transition and --alpha/--beta/--k for those")
    roles, profiles = setting_roles(selection), selection.get("profiles")
    first_roles = {name: role for role, name in reversed(roles.items())}  # a setting in two roles runs once
    return {role.removesuffix("_selected"): parse_setting(name, profiles)[1]
            for role, name in roles.items() if first_roles[name] == role}


def build_conditions(args: argparse.Namespace) -> dict[str, Any]:
    """Condition name -> intervention (None for the baseline).

    Raises:
        UsageError: a bad ``--settings`` (naming the flag) or ``--selection``.
    """
    if args.selection is not None:  # chosen for this model on development documents of this file
        expected = {"model": args.model, "data_sha256": file_sha256(args.xsum), "fix_text": args.fix_text}
        return selection_conditions(args.selection, expected)
    if args.settings is not None:  # each condition named by its canonical setting
        try:
            return {"baseline": None, **parse_settings(args.settings)}
        except SettingError as err:
            raise UsageError(f"argument --settings: {err}") from None
    conds: dict[str, Any] = {"baseline": None}
    if args.transition in ("paper", "both"):
        conds["paper"] = PaperTransition(alpha=args.alpha, beta=args.beta, intervals_per_layer=args.k)
        if not args.no_placebo:
            conds["placebo"] = PlaceboTransition(alpha=args.alpha, beta=args.beta, intervals_per_layer=args.k,
                                                 seed=args.seed)
    if args.transition in ("sra", "both"):
        conds["sra"] = SRATransition(
            begin_length=args.sra_begin_length, threshold_len=args.sra_threshold_len,
            elimi_factor_inter=args.sra_elimi_inter, elimi_factor_outer=args.sra_elimi_outer,
            strengthen_factor_inter=args.sra_strengthen_inter, strengthen_factor_outer=args.sra_strengthen_outer,
        )
    return conds


def tidy_frames(results: dict[str, FlowResult], knock: dict[str, Any]) -> dict[str, Any]:
    """The CSV data behind each figure (head means; differences vs baseline as conditions)."""
    import pandas as pd

    frames = {name: r.to_frame().assign(condition=name) for name, r in results.items()}
    full = pd.concat(frames.values(), ignore_index=True)
    head_mean = (full[full["head"] >= 0].groupby(["condition", "measure", "layer", "region", "from_region"],
                                              dropna=False, sort=False)["value"].mean().reset_index())
    out = {}
    for measure in ("final_token_profile", "final_token_value_profile"):
        profile = head_mean[head_mean.measure == measure][["condition", "layer", "region", "value"]]
        base = profile[profile.condition == "baseline"].set_index(["layer", "region"])["value"]
        diffs = []
        for cond in results:
            if cond == "baseline":
                continue
            d = profile[profile.condition == cond].set_index(["layer", "region"])["value"] - base
            diffs.append(d.reset_index().assign(condition=f"{cond} - baseline"))
        out[measure] = pd.concat([profile, *diffs], ignore_index=True).assign(measure=measure)
    mass = head_mean[head_mean.measure == "region_mass"][["condition", "layer", "from_region", "region", "value"]]
    out["region_mass"] = mass[mass.condition == "baseline"]
    treated = next((c for c in ("paper", "sra") if c in results), None)
    if treated is not None:
        keys = ["layer", "from_region", "region"]
        d = (mass[mass.condition == treated].set_index(keys)["value"]
             - mass[mass.condition == "baseline"].set_index(keys)["value"])
        out["region_mass_diff"] = d.reset_index().assign(condition=f"{treated} - baseline")
    out["layer_measures"] = (full[full.measure.isin(["sink_mass", "entropy", "distance"])]
                             .groupby(["condition", "measure", "layer"], sort=False)["value"].mean().reset_index())
    if (full.measure == "rollout").any():
        out["rollout"] = full[full.measure == "rollout"][["condition", "layer", "region", "value"]]
    if knock:
        rows = []
        for cond, res in knock.items():
            for metric, values in (("kl", res.kl), ("nll_delta", res.nll_delta)):
                if values is None:  # an estimate has no KL
                    continue
                for i, (s, e) in enumerate(res.bands):
                    for j, lab in enumerate(res.region_labels):
                        rows.append({"condition": cond, "metric": metric, "band": f"{s}-{e - 1}",
                                     "region": lab, "value": float(values[i, j])})
        out["knockout"] = pd.DataFrame(rows)
    return out


def agreement(estimate: KnockoutResult | None, exact: KnockoutResult | None) -> float | None:
    """Spearman rank correlation of estimated and exact NLL changes over band x region cells."""
    if estimate is None or exact is None or exact.nll_delta is None:
        return None
    import pandas as pd

    ranks = pd.DataFrame({"estimate": estimate.nll_delta.flatten().numpy(),
                          "exact": exact.nll_delta.flatten().numpy()}).rank()
    return float(ranks["estimate"].corr(ranks["exact"]))


def summary_table(results: dict[str, FlowResult], knock: dict[str, Any]) -> str:
    width = max(10, *map(len, results))  # a --settings condition is named by its whole setting
    lines = [f"{'condition':<{width}} {'sink':>6} {'entropy':>8} {'distance':>9} {'final->doc':>11} "
             f"{'rollout->doc 1st half':>22} {'max KO KL':>10}"]
    for name, r in results.items():
        doc = [i for i, lab in enumerate(r.region_labels) if lab.startswith("doc ")]
        first_half = doc[: len(doc) // 2] or doc
        ctx = r.final_token_profile[-1].mean(0)[doc].sum().item()
        half = f"{r.rollout[-1][first_half].sum().item():22.3f}" if r.rollout is not None else f"{'-':>22}"
        kl = f"{knock[name].kl.max().item():10.4f}" if name in knock else f"{'-':>10}"
        lines.append(f"{name:<{width}} {r.sink_mass.mean():6.3f} {r.entropy.mean():8.3f} {r.distance.mean():9.1f} "
                     f"{ctx:11.3f} {half} {kl}")
    lines.append("sink/entropy/distance: mean over layers and heads; final->doc: last layer's final-token "
                 "mass on document regions; KO: knockout")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report_only:
        return report_only(args)
    try:
        if args.selection is not None and args.docs is None:
            raise UsageError("--selection runs in corpus mode: add --xsum FILE --docs N")
        docs = corpus_documents(args) if args.docs is not None else None
        document, reference, source = read_document(args) if docs is None else ("", None, "")
        conditions = build_conditions(args)
        shape = model_shape(args.model)
        try:  # a bad --model or setting: nothing written
            check_settings(conditions, shape, attention_rows=args.attention_rows)
        except SettingError as err:
            raise UsageError(f"argument --settings: {err}" if args.settings else str(err)) from None
        options = sweep_options(args)
        single = docs is None  # corpus mode's model is loaded by the sweep's worker(s)
        if not single:  # every document's prompt and regions, before the run directory is written
            check_corpus_prompts(args, docs, shape)
        if single and (options["workers"] or options["ray_address"] or args.gpus_per_worker is not None):
            raise UsageError("--workers, --ray-address and --gpus-per-worker spread corpus mode (--docs) "
                             "only")
        model = load_model(args.model, device=args.device, attention_rows=args.attention_rows) if single else None
    except (UsageError, FileNotFoundError, ValueError, OSError) as err:
        print(f"{prog('flow.py')}: error: {err}", file=sys.stderr)
        return 2
    if not single:
        try:
            return run_corpus(args, conditions, docs, options)
        except (UsageError, OSError) as err:  # the run directory, a document's fault (a bug: its traceback)
            print(f"{prog('flow.py')}: error: {err}", file=sys.stderr)
            return 2
    from at_probe.runs.plotting import PLOTS, save_figure

    started = time.time()
    try:
        prompt, ref_tokens = make_prompt(model, document, reference, args.max_tokens)
    except UsageError as err:
        print(f"{prog('flow.py')}: error: {err}", file=sys.stderr)
        return 2
    t = len(prompt)
    doc_tokens = prompt.document[1] - max(prompt.document[0], 1)
    print(f"{source}: {t} prompt tokens ({prompt.style} prompt, {doc_tokens} document tokens), "
          f"{len(conditions)} conditions, model {args.model}")
    if doc_tokens < args.regions:
        print(f"{prog('flow.py')}: error: argument --regions: {doc_tokens} document tokens are too few for "
              f"{args.regions} regions", file=sys.stderr)
        return 2
    n_layers = int(model.cfg.n_layers)
    if args.knockout is not None and args.knockout > n_layers:
        print(f"{prog('flow.py')}: error: argument --knockout: bands of {args.knockout} layers, but {args.model} has "
              f"{n_layers} layers", file=sys.stderr)
        return 2
    band = -(-n_layers // 3) if args.knockout is None else args.knockout
    if args.attribution and ref_tokens is None:
        print(f"{prog('flow.py')}: error: --attribution needs a reference summary (--xsum, or the built-in sample)",
              file=sys.stderr)
        return 2
    results, reports, knock, estimates = {}, {}, {}, {}
    for name, tr in conditions.items():
        results[name], reports[name] = probe_pass(model, prompt, tr, args.regions, args.rollout)
        if name == "placebo":
            release_freed_memory()
            continue
        causal = dict(bounds=results[name].region_bounds, band_size=band or -(-n_layers // 3),
                      labels=results[name].region_labels, reference=ref_tokens, transition=tr)
        if band > 0:
            knock[name] = knockout_sweep(model, prompt.tensor(model.cfg.device), **causal)
        if args.attribution:
            estimates[name] = attribution_sweep(model, prompt.tensor(model.cfg.device), **causal)
        release_freed_memory()  # the next condition must not sit on top of this one's freed heap
    record = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "versions": {"at_probe": at_probe.__version__, "torch": torch.__version__,
                     "python": platform.python_version()},
        "source": source,
        "prompt_tokens": t,
        "prompt_style": prompt.style,
        "prompt_parts": prompt.parts,
        "document_tokens_dropped": prompt.dropped,
        "knockout_band": band,
        "reference_tokens": None if ref_tokens is None else ref_tokens.shape[1],
        "conditions": {
            name: {"flow": results[name].to_dict(),
                   "transition": None if tr is None else repr(tr),
                   "report": None if reports[name] is None else {
                       str(l): vars(r) for l, r in reports[name].layers.items()},
                   "knockout": knock[name].to_dict() if name in knock else None,
                   "attribution": estimates[name].to_dict() if name in estimates else None,
                   "attribution_vs_knockout_spearman": agreement(estimates.get(name), knock.get(name))}
            for name, tr in conditions.items()
        },
        "seconds": round(time.time() - started, 1),
    }
    try:
        with owned_run(args.out):  # one writer: another run's files are never mixed with these
            write_json_atomic(args.out / "flow.json", record, default=str)
            write_json_atomic(args.out / "args.json", {"argv": sys.argv[1:] if argv is None else argv,
                                                       **record["args"], **record["versions"]})
            causal_maps = {**knock, **{f"{name} (linear estimate)": est for name, est in estimates.items()}}
            for name, frame in tidy_frames(results, causal_maps).items():
                save_figure(PLOTS[name](frame), args.out, name, frame)
    except OSError as err:  # another run writing to --out
        print(f"{prog('flow.py')}: error: {err}", file=sys.stderr)
        return 2
    print(summary_table(results, knock))
    for name in estimates:
        rho = record["conditions"][name]["attribution_vs_knockout_spearman"]
        if rho is not None:
            print(f"{name}: attribution estimate vs exact knockout of the reference NLL, Spearman {rho:+.2f} "
                  f"over {estimates[name].nll_delta.numel()} band x region cells")
    print(f"wrote {args.out}/flow.json and figures ({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
