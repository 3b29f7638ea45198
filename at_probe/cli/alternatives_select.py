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
2. **Sweep** (the first ``--docs`` development documents): baseline and the grid
   ``ALTERNATIVES_GRID`` (emphasis top 1/2/4/8/16 heads per target, calibration strength
   0.25/0.5/1 on the last half of the layers, temperature 0.7/0.85/1.15/1.3 on the last half)
   scored by ``summary_nll``, one forward pass each; per method the lowest mean is selected.

``selection.json`` holds the choices (``selected``), every setting's mean NLL and paired
difference from the baseline (bootstrap 95% interval over documents), the profiles, and the
test run's settings and roles: baseline, each method's choice, and the placebos of emphasis
(``emphasis_placebo``: random heads in the same layers when the document is emphasised, a
random span of the same length for the instruction; ``emphasis_span_placebo``: the span, for
either target) and calibration (the weights shuffled across regions).

``--fix-text`` repairs the release's mojibake (ftfy) in documents and references, prints how many
documents it changed and is recorded in the manifest (off by default; the test run must match).

Usage:
    python analyses/alternatives_select.py --bucket 800 --out runs/alt-800
    python analyses/alternatives_select.py --bucket 1900 --head-ranking-from runs/alt-800/selection.json \\
        --out runs/alt-1900
    python analyses/xsum_eval.py --bucket 800 --selection runs/alt-800/selection.json --out runs/alt-test-800
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

import at_probe
from at_probe.cli.args import (
    ArgumentParser,
    add_fix_text_argument,
    add_sweep_arguments,
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
from at_probe.interventions.emphasis import TARGETS, profile_heads
from at_probe.interventions.profiling import rank_heads
from at_probe.models.loading import DEFAULT_MODEL, model_shape
from at_probe.runs.runfiles import (
    append_jsonl,
    ensure_manifest,
    file_sha256,
    json_sha256,
    owned_run,
    read_jsonl,
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


def emphasis_targets(text: str) -> list[str]:
    """An argparse type: a comma-separated list of emphasis targets (``at_probe.interventions.emphasis.TARGETS``)."""
    targets = list(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    if not targets or any(t not in TARGETS for t in targets):
        raise argparse.ArgumentTypeError(f"must name some of {', '.join(TARGETS)}, got {text!r}")
    return targets


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
    p.add_argument(
        "--regions", type=positive_int, default=DEFAULT_REGIONS,
        help=f"document regions of the position bias (default {DEFAULT_REGIONS})"
    )
    p.add_argument(
        "--targets",
        type=emphasis_targets,
        default=",".join(TARGETS),
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
    return p.parse_args(argv)


def profile_head_deltas(
    model: Any, docs: list[dict[str, Any]], target: str, path: Path, max_new_tokens: int
) -> dict[tuple[int, int], float]:
    """Each head steered alone (``profile_heads``), its NLL change averaged over ``docs``.

    One line per (target, document) in ``path``, appended as each document finishes; a re-run
    continues with the documents not yet profiled.
    """
    from at_probe.models.prompts import build_prompt, continuation_ids

    done = {r["doc_id"]: r["deltas"] for r in read_jsonl(path, repair=True) if r["target"] == target}
    n_heads = int(model.cfg.n_layers) * int(model.cfg.n_heads)
    limit = prompt_limit(model, None, max_new_tokens)
    with (
        open(path, "a", encoding="utf-8") as fh,
        tqdm(total=len(docs) * n_heads, desc=f"heads ({target})", initial=len(done) * n_heads) as bar,
    ):
        for doc in docs:
            if str(doc["id"]) in done:
                continue
            prompt = build_prompt(model.tokenizer, doc["document"], max_tokens=limit)
            deltas = profile_heads(
                model,
                prompt,
                continuation_ids(model.tokenizer, doc["summary"]),
                target=target,
                progress=bar.update,
            )
            done[str(doc["id"])] = [[l, h, d] for (l, h), d in deltas.items()]
            append_jsonl(fh, [{"target": target, "doc_id": str(doc["id"]), "deltas": done[str(doc["id"])]}])
    per_doc = [{(l, h): d for l, h, d in done[str(doc["id"])]} for doc in docs]
    return {key: float(np.mean([p[key] for p in per_doc])) for key in per_doc[0]}


def build_profiles(
    args: argparse.Namespace, docs: list[dict[str, Any]], targets: list[str]
) -> dict[str, Any]:
    """The position bias and the head ranking per target, from the profiling documents."""
    from at_probe.interventions.calibration import estimate_position_bias
    from at_probe.models.loading import load_model
    from at_probe.models.prompts import build_prompts

    source = None  # a reused ranking is checked before anything is computed
    if args.head_ranking_from is not None:
        ranking, source = reused_ranking(args.head_ranking_from, args.model, targets)
    model = load_model(args.model, device=args.device)
    prompts = build_prompts(
        model.tokenizer,
        [d["document"] for d in docs],
        max_tokens=prompt_limit(model, None, args.max_new_tokens),
    )
    with tqdm(total=len(prompts), desc="position bias") as bar:
        bias = estimate_position_bias(model, prompts, regions=args.regions, progress=bar.update)
    if args.head_ranking_from is None:
        ranking = {
            t: rank_heads(
                profile_head_deltas(model, docs, t, args.out / "profile.jsonl", args.max_new_tokens)
            )
            for t in targets
        }
    return {"position_bias": bias.to_json(), "head_ranking": ranking,
            "profile_documents": [str(d["id"]) for d in docs], "head_ranking_source": source}


def reused_ranking(path: Path, model: str, targets: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The head ranking of another alternatives run, checked (same model, development documents),
    and where it came from (path, sha256, bucket, the documents it was profiled on)."""
    try:
        selection = json.loads(path.read_text())
        manifest = json.loads((path.parent / "manifest.json").read_text())
        ranking = selection["profiles"]["head_ranking"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not the selection.json of an alternatives_select.py run: {err!r}") from None
    if manifest.get("split") != "development" or manifest.get("model") != model:
        raise ValueError(f"{path} was profiled with model {manifest.get('model')!r} on split "
                         f"{manifest.get('split')!r}, not on development documents with {model!r}")
    missing = [t for t in targets if t not in ranking]
    if missing:
        raise ValueError(f"{path} has no head ranking for {', '.join(missing)}")
    source = {"path": str(path), "sha256": file_sha256(path), "bucket": manifest.get("bucket"),
              "profile_documents": selection["profiles"].get("profile_documents")}
    return {t: ranking[t] for t in targets}, source


def sweep_settings(targets: list[str]) -> list[str]:
    """Baseline and the grid, emphasis restricted to the profiled targets."""
    grid = [
        s
        for method in ALTERNATIVES
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
        settings = sweep_settings(targets)
        shape = model_shape(args.model)  # a bad --model: exit 2 before the directory exists
        config = {
            "model": args.model,
            "data_file": data_file.name,
            "data_sha256": file_sha256(data_file),
            "bucket": args.bucket,
            "split": "development",
            "documents": [str(d["id"]) for d in docs],
            "profile_documents": [str(d["id"]) for d in profile_docs],
            "regions": args.regions,
            "targets": targets,
            "settings": settings,
            "max_new_tokens": args.max_new_tokens,
            "batch_size": args.batch_size,
            "metric": "summary_nll",
            **text_repair_manifest(args.fix_text),
            # the reused ranking itself, not its file's bytes: a refreshed file of the same ranking resumes
            "head_ranking_from": (
                json_sha256(reused_ranking(args.head_ranking_from, args.model, targets)[0])
                if args.head_ranking_from else None
            ),
            "at_probe_version": at_probe.__version__,
        }
        # one driver; the manifest (which profile.jsonl and profiles.json belong to) checked first
        with owned_run(args.out):
            ensure_manifest(args.out, config)
            profiles_path = args.out / "profiles.json"
            if profiles_path.is_file():
                profiles = json.loads(profiles_path.read_text())
            else:
                profiles = build_profiles(args, profile_docs, targets)
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
            selection = select_alternatives(sink.records, ALTERNATIVES)
            selection["minus_baseline"] = minus_baseline(sink.records, [str(d["id"]) for d in docs])
            selection["profiles"] = profiles
            selection["test_settings"] = run_settings(selection)
            selection["roles"] = setting_roles(selection)
            write_json_atomic(args.out / "selection.json", selection)
    except (FileNotFoundError, ValueError, OSError, KeyError) as err:
        print(f"{prog('alternatives_select.py')}: error: {err}", file=sys.stderr)
        return 2
    for method, name in selection["selected"].items():
        print(f"{method}: {name}  {describe(selection['minus_baseline'][name])} nats vs baseline")
    print(f"wrote {args.out / 'selection.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
