"""What Ray adds to a sweep, measured side by side in one process (``at_probe.runs.sweep``).

* speedup: the same XSum units (tiny model by default, ``--docs`` held-out documents x three
  settings, batches of 2) in this process, on 1 Ray actor and on ``--workers`` actors; each
  run's wall time includes starting Ray and loading the model in every actor, as a user sees
  it, and the steady-state time (after the first unit) is reported beside it;
* per-unit overhead: ``--echo-units`` units whose work is nothing (a worker that returns at
  once) through Ray vs in this process: the scheduling and transfer cost of one unit.

Usage:
    python analyses/bench_sweep.py [--model tiny] [--docs 8] [--workers 2] [--json OUT]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from at_probe.cli.args import (
    ArgumentParser,
    existing_dir,
    int_at_least,
    model_name,
    output_dir,
    output_file,
    positive_int,
    prog,
)
from at_probe.runs.runfiles import owned_run, write_json_atomic
from at_probe.runs.sweep import FunctionWorker, RecordSink, Unit, plan_units, run_units
from at_probe.xsum import SummaryWorkerFactory, bucket_file, is_heldout, load_records, parse_settings

REPO = Path(__file__).resolve().parents[2]
SETTINGS = "baseline;paper:alpha=1,beta=0.5,k=2;placebo:alpha=1,beta=0.5,k=2"


class EchoFactory:
    """A worker with no model and no work: one record per document, at once."""

    def __call__(self) -> FunctionWorker:
        return FunctionWorker({"device": "none"}, lambda unit: [{"doc_id": d, "setting": unit.setting}
                                                                for d in unit.doc_ids])


def timed_sweep(units: list[Unit], factory: Any, workers: int, out: Path) -> dict[str, float]:
    """Wall seconds of one sweep, and of its units after the first one was written."""
    with owned_run(out.parent):  # the scratch folder's records are this process's alone
        sink = RecordSink(out)
        first: list[float] = []
        t0 = time.perf_counter()
        run_units(units, factory, sink.write, workers=workers,
                  progress=lambda unit: first.append(time.perf_counter()) if not first else None)
        end = time.perf_counter()
    return {"seconds": end - t0, "after_first_unit_seconds": end - first[0], "records": len(sink.records)}


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="bench_sweep.py", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=model_name, default="tiny")
    p.add_argument("--data", type=existing_dir, default=REPO.parent / "shared" / "data" / "xsum-at-release")
    p.add_argument("--docs", type=positive_int, default=8)
    p.add_argument("--workers", type=int_at_least(2), default=2, help="actors compared with 1 (default 2)")
    p.add_argument("--echo-units", type=int_at_least(2), default=200,
                   help="empty units timed after the first one (default 200)")
    p.add_argument("--json", type=output_file, default=None)
    p.add_argument("--scratch", type=output_dir, default=Path("/tmp/at_probe_bench_sweep"))
    args = p.parse_args(argv)

    try:
        docs = [d for d in load_records(bucket_file(args.data, "800")) if is_heldout(d["id"])][: args.docs]
    except (FileNotFoundError, ValueError) as err:
        print(f"{prog('bench_sweep.py')}: error: argument --data: {err}", file=sys.stderr)
        return 2
    settings = ";".join(parse_settings(SETTINGS))
    units = plan_units(settings.split(";"), docs, 2)
    factory = SummaryWorkerFactory(args.model, "cpu", settings, max_new_tokens=20)
    args.scratch.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"model": args.model, "units": len(units), "documents": len(docs)}
    for name, workers in (("in_process", 0), ("ray_1", 1), (f"ray_{args.workers}", args.workers)):
        path = args.scratch / f"{name}.jsonl"
        path.unlink(missing_ok=True)
        results[name] = timed_sweep(units, factory, workers, path)
        print(f"{name:<12} {results[name]['seconds']:7.1f} s  (after the first unit "
              f"{results[name]['after_first_unit_seconds']:.1f} s), {results[name]['records']} records")
    many = f"ray_{args.workers}"
    results["speedup_vs_1_actor"] = results["ray_1"]["seconds"] / results[many]["seconds"]
    results["speedup_vs_1_actor_after_first_unit"] = (results["ray_1"]["after_first_unit_seconds"]
                                                      / results[many]["after_first_unit_seconds"])
    print(f"{args.workers} actors vs 1: {results['speedup_vs_1_actor']:.2f}x wall, "
          f"{results['speedup_vs_1_actor_after_first_unit']:.2f}x after the first unit")

    echo = [Unit("echo", ({"id": str(i)},)) for i in range(args.echo_units)]
    local = timed_sweep(echo, EchoFactory(), 0, args.scratch / "echo_local.jsonl")
    remote = timed_sweep(echo, EchoFactory(), 1, args.scratch / "echo_ray.jsonl")
    extra = remote["after_first_unit_seconds"] - local["after_first_unit_seconds"]
    per_unit = extra / (args.echo_units - 1)
    results["ray_overhead_ms_per_unit"] = per_unit * 1000
    print(f"Ray adds {per_unit * 1000:.1f} ms per unit ({args.echo_units} empty units, one actor, "
          f"after the first; the records are written and fsynced by the driver in both)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
