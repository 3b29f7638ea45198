"""Development sweep: choose the transition settings on documents the test never sees.

On the development documents of a bucket (``int(id) % 4 != 0``; the test run of
``xsum_eval.py`` uses the held-out ones, ``int(id) % 4 == 0``), every setting of the paper's
grid (alpha in {0.5, 1, 1.5} x beta in {0.1, 0.3, 0.5, 0.8, 1.0, 1.5} x K in {1, 2, 3, 4}),
the SRA defaults and the SRA worked example, and the baseline are scored by ``summary_nll``:
the teacher-forced NLL (nats/token) of the reference summary after the chat prompt, setting
active, one forward pass each, no generation. The paper and SRA settings with the lowest mean
are selected.

The run directory gets ``manifest.json``, ``sweep.jsonl`` (one line per document and setting;
killed and re-run with the same arguments, the sweep continues where it stopped) and
``selection.json``: the two choices, each setting's mean NLL (``mean_nll``) and its paired
difference from the baseline with a bootstrap 95% interval over documents
(``minus_baseline``), and ``test_settings``, the settings of the test run
(``xsum_eval.py --selection RUN/selection.json``, which checks the bucket, model, data and
``--max-new-tokens`` and ``--fix-text`` against this run's manifest). ``--fix-text`` repairs
the release's mojibake (ftfy; off by default) and prints how many documents it changed.
``--workers`` / ``--ray-address`` spread the (batch, setting) units over Ray actors
(``at_probe.runs.sweep``).

Usage:
    python analyses/xsum_select.py --bucket 800 --docs 40 --out runs/xsum-smollm2/dev-800
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm.auto import tqdm

import at_probe
from at_probe.cli.args import (
    ArgumentParser,
    UsageError,
    add_fix_text_argument,
    add_sweep_arguments,
    check_summary_room,
    existing_dir,
    model_name,
    output_dir,
    positive_int,
    prog,
    sweep_options,
    torch_device,
)
from at_probe.models.loading import DEFAULT_MODEL, load_tokenizer, model_shape
from at_probe.runs.runfiles import check_manifest, ensure_manifest, file_sha256, owned_run, write_json_atomic
from at_probe.runs.sweep import RecordSink, plan_units, run_units
from at_probe.xsum import (
    BUCKETS,
    NLLWorkerFactory,
    bucket_file,
    check_settings,
    development_sweep_settings,
    is_development,
    load_records,
    minus_baseline,
    repair_note,
    run_settings,
    select_settings,
    text_repair_manifest,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(prog="xsum_select.py", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=model_name, default=DEFAULT_MODEL,
                   help="'smollm2' (default), 'tiny', a local HF Llama directory, or a hub id")
    p.add_argument("--data", type=existing_dir, default=Path("../shared/data/xsum-at-release"))
    p.add_argument("--bucket", choices=BUCKETS, default="800")
    p.add_argument("--docs", type=positive_int, default=40,
                   help="first N development documents of the bucket")
    p.add_argument("--max-new-tokens", type=positive_int, default=50,
                   help="room kept after the prompt, as in the test run (prompts are cut the same way)")
    add_fix_text_argument(p)
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--device", type=torch_device, default=None)
    p.add_argument("--out", type=output_dir, required=True, help="run directory")
    add_sweep_arguments(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        options = sweep_options(args)
        data_file = bucket_file(args.data, args.bucket)
        records = load_records(data_file, fix_text=args.fix_text)
        docs = [d for d in records if is_development(d["id"])][: args.docs]
        if args.fix_text:
            print(repair_note(records, docs))
        built = development_sweep_settings()
        shape = model_shape(args.model)
        check_settings(built, shape)  # a bad --model: exit 2 before the directory exists
        check_summary_room(load_tokenizer(args.model), shape, docs, args.max_new_tokens)
        settings = list(built)
        config = {"model": args.model, "data_file": data_file.name, "data_sha256": file_sha256(data_file),
                  "bucket": args.bucket, "split": "development", "documents": [str(d["id"]) for d in docs],
                  "settings": settings, "max_new_tokens": args.max_new_tokens,
                  "batch_size": args.batch_size, "metric": "summary_nll",
                  **text_repair_manifest(args.fix_text),
                  "at_probe_version": at_probe.__version__}
    except (FileNotFoundError, ValueError, OSError) as err:  # bad input: nothing written
        print(f"{prog('xsum_select.py')}: error: {err}", file=sys.stderr)
        return 2
    try:
        with owned_run(args.out):  # one driver; the manifest checked before sweep.jsonl is repaired
            check_manifest(args.out, config)
            sink = RecordSink(args.out / "sweep.jsonl")
            units = sink.pending(plan_units(settings, docs, args.batch_size))
            factory = NLLWorkerFactory(args.model, args.device, args.max_new_tokens)
            with tqdm(total=len(docs) * len(settings), initial=len(sink.done), desc="dev sweep",
                      unit="score") as bar:
                run_units(units, factory, sink.write, start=lambda described: ensure_manifest(args.out, {
                    **config, **described}), progress=lambda unit: bar.update(len(unit.docs)), **options)
            selection = select_settings(sink.records)
            selection["minus_baseline"] = minus_baseline(sink.records, [str(d["id"]) for d in docs])
            selection["test_settings"] = run_settings(selection)
            write_json_atomic(args.out / "selection.json", selection)
    except (UsageError, OSError) as err:  # another driver or run in --out, a reference that does not fit
        print(f"{prog('xsum_select.py')}: error: {err}", file=sys.stderr)
        return 2

    paper, sra = selection["paper"], selection["sra"]
    print(f"selected on {selection['n_documents']} development documents: {paper} "
          f"({selection['minus_baseline'][paper]['mean']:+.4f} nats vs baseline), {sra} "
          f"({selection['minus_baseline'][sra]['mean']:+.4f})")
    print(f"wrote {args.out / 'selection.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
