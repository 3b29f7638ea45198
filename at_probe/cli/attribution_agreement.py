"""How far the one-pass causal map can be trusted: attribution patching vs exact knockout.

For each of the first ``--docs`` held-out documents of ``--xsum`` (SmolLM2 by default, the
chat prompt, ``--regions`` document regions plus the sink, template and instruction), every
(layer band x region) knockout's change of the reference summary's NLL is computed twice:
exactly (``knockout_sweep``: one pass per cell) and by attribution patching
(``attribution_sweep``: one forward and one backward pass). Per document, the Spearman
correlation over the cells says whether the estimate ranks the knockouts right; per cell,
the error, the sign agreement and the ratio estimate/exact over documents say where it fails.

Writes into ``--out``: ``docs.jsonl`` (one line per document, resumable), ``agreement.json``
(per-document Spearman, its mean with a bootstrap 95% interval, and the cells ranked by how
badly the estimate does), ``attribution_agreement.csv`` + ``.png`` (every cell of every
document, estimate against exact). ``--fix-text`` repairs the release's mojibake (ftfy) in
documents and references and prints how many documents it changed (recorded in the manifest).

Usage:
    python analyses/attribution_agreement.py --xsum ../shared/data/xsum-at-release/token_800_evaluation.json.gz \\
        --docs 8 --out figures/flow-smollm2/attribution-agreement-800
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

import at_probe
from at_probe.cli.args import (
    ArgumentParser,
    add_fix_text_argument,
    check_prompts,
    existing_file,
    model_name,
    output_dir,
    positive_int,
    prog,
    torch_device,
)
from at_probe.flow.attribution import attribution_sweep
from at_probe.flow.knockout import knockout_sweep
from at_probe.flow.ops import prompt_regions
from at_probe.flow.probe import DEFAULT_REGIONS
from at_probe.models.loading import DEFAULT_MODEL, load_model
from at_probe.models.prompts import Prompt, build_prompt, continuation_ids
from at_probe.runs.errors import UsageError
from at_probe.runs.runfiles import (
    append_jsonl,
    ensure_manifest,
    file_sha256,
    owned_run,
    read_jsonl,
    write_json_atomic,
)
from at_probe.runs.stats import bootstrap_mean, describe
from at_probe.xsum import is_heldout, load_records, repair_note, text_repair_manifest


def document_prompt(model: Any, record: dict[str, Any]) -> tuple[Prompt, list[int]]:
    """A document's prompt, cut to leave room for its reference, and the reference's ids."""
    ref = continuation_ids(model.tokenizer, record["summary"])
    return build_prompt(model.tokenizer, record["document"], max_tokens=int(model.cfg.n_ctx) - len(ref)), ref


def document_cells(model: Any, record: dict[str, Any], regions: int, band: int) -> dict[str, Any]:
    """Exact and estimated NLL change of every (band, region) knockout of one document."""
    prompt, ref = document_prompt(model, record)
    bounds, labels = prompt_regions(len(prompt), regions, prompt.document)
    kw = dict(
        bounds=bounds, band_size=band, labels=labels, reference=torch.tensor([ref], device=model.cfg.device)
    )
    tokens = prompt.tensor(model.cfg.device)
    exact = knockout_sweep(model, tokens, progress=False, **kw)
    estimate = attribution_sweep(model, tokens, **kw)
    cells = [
        {"band": f"{lo}-{hi - 1}", "region": label, "exact": float(exact.nll_delta[i, j]),
         "estimate": float(estimate.nll_delta[i, j])}
        for i, (lo, hi) in enumerate(exact.bands)
        for j, label in enumerate(exact.region_labels)
    ]
    ranks = pd.DataFrame(cells)[["estimate", "exact"]].rank()
    return {"doc_id": str(record["id"]), "prompt_tokens": len(prompt), "base_nll": exact.base_nll,
            "spearman": float(ranks["estimate"].corr(ranks["exact"])), "cells": cells}


def failures(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Per (band, region) over documents: mean exact and estimated change, mean absolute error,
    the share of documents where the signs agree, and the estimate/exact ratio of the means;
    worst (largest mean absolute error) first."""
    rows = []
    for (band, region), part in frame.groupby(["band", "region"], sort=False):
        mean_exact, mean_est = part.exact.mean(), part.estimate.mean()
        rows.append({"band": band, "region": region, "mean_exact": mean_exact, "mean_estimate": mean_est,
                     "mean_abs_error": (part.estimate - part.exact).abs().mean(),
                     "sign_agreement": float((np.sign(part.estimate) == np.sign(part.exact)).mean()),
                     "ratio_of_means": mean_est / mean_exact if mean_exact else None})
    return sorted(rows, key=lambda r: -r["mean_abs_error"])


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="attribution_agreement.py", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=model_name, default=DEFAULT_MODEL,
                   help="'smollm2' (default), 'tiny', a local HF Llama directory, or a hub id")
    p.add_argument("--xsum", type=existing_file, required=True,
                   help="an XSum release file (.json or .json.gz)")
    p.add_argument("--docs", type=positive_int, default=8, help="first N held-out documents (default 8)")
    p.add_argument("--regions", type=positive_int, default=DEFAULT_REGIONS,
                   help=f"document regions (default {DEFAULT_REGIONS})")
    add_fix_text_argument(p)
    p.add_argument("--band", type=positive_int, default=None,
                   help="layers per band, at most the model's layers (default: a third of them)")
    p.add_argument("--device", type=torch_device, default=None)
    p.add_argument("--out", type=output_dir, required=True)
    args = p.parse_args(argv)
    try:
        release = load_records(args.xsum, fix_text=args.fix_text)
        records = [r for r in release if is_heldout(r["id"])][: args.docs]
        if args.fix_text:
            print(repair_note(release, records))
        model = load_model(args.model, device=args.device)
        n_layers = int(model.cfg.n_layers)
        if args.band is not None and args.band > n_layers:
            raise ValueError(f"argument --band: bands of {args.band} layers, but {args.model} has "
                             f"{n_layers} layers")
        band = args.band or -(-n_layers // 3)
        # every prompt and its regions, before the run directory is written
        check_prompts(records, lambda r: document_prompt(model, r)[0], room_flag=None, regions=args.regions)
        manifest = {"model": args.model, "xsum": args.xsum.name, "xsum_sha256": file_sha256(args.xsum),
                    "regions": args.regions, "band": band, "at_probe_version": at_probe.__version__,
                    **text_repair_manifest(args.fix_text)}
    except (FileNotFoundError, ValueError, OSError) as err:
        print(f"{prog('attribution_agreement.py')}: error: {err}", file=sys.stderr)
        return 2
    from at_probe.runs.plotting import attribution_agreement, save_figure

    try:
        with owned_run(args.out):  # one driver; the manifest checked before docs.jsonl is repaired
            ensure_manifest(args.out, manifest)
            path = args.out / "docs.jsonl"
            done = {r["doc_id"]: r for r in read_jsonl(path, repair=True)}
            started = time.time()
            with open(path, "a", encoding="utf-8") as fh:
                todo = [r for r in records if str(r["id"]) not in done]
                for record in tqdm(todo, desc="documents", unit="doc"):
                    row = document_cells(model, record, args.regions, band)
                    append_jsonl(fh, [row])
                    done[row["doc_id"]] = row
            rows = [done[str(r["id"])] for r in records]
            frame = pd.DataFrame([{"doc_id": r["doc_id"], **c} for r in rows for c in r["cells"]])
            rho = np.array([r["spearman"] for r in rows])
            result = {"documents": len(rows), "band": band, "regions": args.regions,
                      "spearman_per_document": {r["doc_id"]: r["spearman"] for r in rows},
                      # a document whose ranking is constant has no Spearman (NaN): left out, counted
                      "spearman_mean": bootstrap_mean(rho, missing="drop").to_dict(),
                      "spearman_median": float(np.nanmedian(rho)) if np.isfinite(rho).any() else None,
                      "cells_worst_first": failures(frame), "seconds": round(time.time() - started, 1)}
            write_json_atomic(args.out / "agreement.json", result)
            save_figure(attribution_agreement(frame), args.out, "attribution_agreement", frame)
    except (UsageError, OSError) as err:  # another driver or run in --out; a bug keeps its traceback
        print(f"{prog('attribution_agreement.py')}: error: {err}", file=sys.stderr)
        return 2
    m = result["spearman_mean"]
    print(f"Spearman(estimate, exact) over {len(rows)} documents: mean {describe(m, digits=2)}, "
          f"median {result['spearman_median']:+.2f}")
    for c in result["cells_worst_first"][:5]:
        print(f"  {c['band']:>6} {c['region']:<12} exact {c['mean_exact']:+.3f}  estimate {c['mean_estimate']:+.3f}"
              f"  signs agree {c['sign_agreement']:.0%}")
    print(f"wrote {args.out / 'agreement.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
