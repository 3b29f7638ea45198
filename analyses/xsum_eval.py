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

The run directory holds ``manifest.json`` (model, prompt style, data file hash, settings, version) and
``records.jsonl`` (one line per document and setting). Killed at any moment and re-run with
the same arguments, it continues where it stopped; a different configuration is refused.

Usage:
    python analyses/xsum_eval.py --data ../shared/data/xsum-at-release --bucket 800 --limit 20 --out runs/smol800
    python analyses/xsum_report.py runs/smol800
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
import transformers
from tqdm.auto import tqdm

import at_probe
from at_probe import text_metrics
from at_probe.loading import DEFAULT_MODEL
from at_probe.prompts import prompt_style
from at_probe.runfiles import append_jsonl, ensure_manifest, file_sha256, read_jsonl
from at_probe.xsum import (
    BUCKETS,
    SettingError,
    bucket_file,
    is_heldout,
    load_records,
    parse_settings,
    reference_nll,
    setting_roles,
    summarise,
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
                        help="selection.json of xsum_select.py: run its test_settings")
    p.add_argument("--max-new-tokens", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default=None)
    p.add_argument("--out", type=Path, required=True, help="run directory")
    return p.parse_args(argv)


def read_selection(path: Path) -> dict[str, Any]:
    """A development sweep's ``selection.json`` (``xsum_select.py``)."""
    import json

    try:
        selection = json.loads(path.read_text())
        selection["test_settings"], selection["paper"], selection["sra"]
    except (KeyError, TypeError, json.JSONDecodeError) as err:
        raise RunError(f"{path} is not a selection.json of xsum_select.py: {err!r}") from None
    return selection


def load_done(records_path: Path) -> set[tuple[str, str]]:
    """Completed (doc_id, setting) pairs; a partial last line from a kill is cut off."""
    return {(r["doc_id"], r["setting"]) for r in read_jsonl(records_path, repair=True)}


def score(output: str, rec: dict[str, Any]) -> dict[str, Any]:
    positions = text_metrics.source_positions(output, rec["document"])
    return {
        **text_metrics.rouge(output, rec["summary"]),
        "repetition_4gram": text_metrics.repetition_rate(output),
        "novel_bigrams": text_metrics.novel_bigram_share(output, rec["document"]),
        "source_position_mean": sum(positions) / len(positions) if positions else None,
        "source_ngrams_matched": len(positions),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        selection = read_selection(args.selection) if args.selection else None
        settings = parse_settings(";".join(selection["test_settings"]) if selection else args.settings)
        if args.batch_size < 1 or args.max_new_tokens < 1 or (args.limit is not None and args.limit < 1):
            raise RunError("--batch-size, --max-new-tokens and --limit must be >= 1")
        data_file = bucket_file(args.data, args.bucket)
        docs = load_records(data_file)
        if args.split == "heldout":
            docs = [d for d in docs if is_heldout(d["id"])]
        docs = docs[: args.limit]
        model = at_probe.load_model(args.model, device=args.device)  # before the manifest: a bad --model writes nothing
        manifest = {"model": args.model, "prompt_style": prompt_style(model.tokenizer),
                    "data_file": data_file.name, "data_sha256": file_sha256(data_file),
                    "bucket": args.bucket, "split": args.split,
                    **({"selection_sha256": file_sha256(args.selection), "roles": setting_roles(selection)}
                       if selection else {}),
                    "limit": args.limit, "settings": list(settings),
                    "max_new_tokens": args.max_new_tokens, "device": str(model.cfg.device),
                    "dtype": str(model.cfg.dtype).removeprefix("torch."), "at_probe_version": at_probe.__version__,
                    "versions": {"torch": torch.__version__, "transformers": transformers.__version__}}
        ensure_manifest(args.out, manifest)
    except (SettingError, RunError, FileNotFoundError, ValueError, OSError) as err:
        print(f"xsum_eval.py: error: {err}", file=sys.stderr)
        return 2

    records_path = args.out / "records.jsonl"
    done = load_done(records_path)
    todo = [(name, d) for name in settings for d in docs if (str(d["id"]), name) not in done]
    print(f"{len(docs)} documents x {len(settings)} settings: {len(done)} done, {len(todo)} to go")
    bar = tqdm(total=len(todo), desc="xsum", unit="summary")
    try:
        write_records(args, model, settings, todo, records_path, bar)
    except ValueError as err:  # e.g. a reference that does not fit after its prompt
        print(f"xsum_eval.py: error: {err}", file=sys.stderr)
        return 2
    finally:
        bar.close()
    print(f"wrote {records_path}")
    return 0


def write_records(args: argparse.Namespace, model: Any, settings: dict[str, Any],
                  todo: list[tuple[str, dict[str, Any]]], records_path: Path, bar: Any) -> None:
    """Summarise and score the pending (setting, document) pairs in batches, appending records."""
    with open(records_path, "a", encoding="utf-8") as out:
        for name in settings:
            pending = [d for n, d in todo if n == name]
            for start in range(0, len(pending), args.batch_size):
                batch = pending[start : start + args.batch_size]
                t0 = time.perf_counter()
                documents = [d["document"] for d in batch]
                outputs = summarise(model, documents, settings[name], max_new_tokens=args.max_new_tokens)
                nlls = reference_nll(model, documents, [d["summary"] for d in batch], settings[name],
                                     max_new_tokens=args.max_new_tokens)
                seconds = (time.perf_counter() - t0) / len(batch)
                append_jsonl(out, [{"doc_id": str(d["id"]), "setting": name, "output": o, **score(o, d),
                                    "summary_nll": nll, "wall_seconds": seconds}
                                   for d, o, nll in zip(batch, outputs, nlls)])
                bar.update(len(batch))


if __name__ == "__main__":
    raise SystemExit(main())
