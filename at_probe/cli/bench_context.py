"""Long-context budgets of chunked attention (issue #22): ``bench.py --long-context``.

For each length ``T`` (tokens of concatenated XSum development documents), against a Hugging
Face forward of the same checkpoint and tokens with SDPA attention (no ``T x T`` pattern):

* time, in this process, paired and interleaved, the rounds taking every order in turn (median of
  ``--repeats`` ratios): a chunked bridge forward with a ``FlowProbe`` (raw and value-weighted)
  over SDPA; the chunked forward alone over SDPA; the probe's own cost (chunked with probe
  over chunked alone); and, where it fits (``--stock-up-to``), the stock (unchunked) bridge
  forward over SDPA for reference;
* memory, each in a fresh process: the peak resident memory a forward adds to the loaded
  model, once a 16-token forward has paged every weight in (Linux ``VmHWM`` after
  ``clear_refs``, minus the resident size before the pass), and the peak in all, for the same
  four forwards.

The results record the commit, CPU and library versions they were measured with.

The budgets: at 8,192 tokens chunked+probe at most 1.3x SDPA's added peak memory and 2.5x its
time; the probe at most 1.15x the chunked forward.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import torch

KINDS = ("sdpa", "chunked_probe", "chunked", "stock")
"""The forwards compared: HF SDPA, the chunked bridge with the probe, alone, the stock bridge."""


def long_tokens(tokenizer: Any, n_tokens: int, data: Path) -> torch.Tensor:
    """``[1, n_tokens]`` ids: BOS-free text of the XSum development documents, concatenated.

    Raises:
        UsageError: the documents hold fewer tokens.
    """
    from at_probe.longctx.tasks import development_documents
    from at_probe.runs.errors import UsageError

    ids: list[int] = []
    for text in development_documents(data):
        ids += tokenizer(text + "\n\n", add_special_tokens=False)["input_ids"]
        if len(ids) >= n_tokens:
            return torch.tensor([ids[:n_tokens]])
    raise UsageError(f"argument --long-context: the development documents hold fewer than {n_tokens} tokens")


def forward(kind: str, model_name: str, rows: int, device: str | None) -> Callable[[torch.Tensor], Any]:
    """A function running one forward of ``kind`` (``KINDS``) on a ``[1, T]`` tensor of ids."""
    from at_probe.flow.probe import FlowProbe
    from at_probe.models.loading import load_hf_model, load_model

    if kind == "sdpa":
        hf = load_hf_model(model_name, device=device)
        return lambda tokens: hf(tokens.to(hf.device)).logits
    model = load_model(model_name, device=device, attention_rows=None if kind == "stock" else rows)
    if kind != "chunked_probe":
        return lambda tokens: model(tokens.to(model.cfg.device))

    def probed(tokens: torch.Tensor) -> Any:
        probe = FlowProbe.for_model(model, value_weighted=True)
        logits = model.run_with_hooks(tokens.to(model.cfg.device), fwd_hooks=probe.hooks())
        probe.result()
        return logits
    return probed


def child_peak(kind: str, model_name: str, n_tokens: int, rows: int, data: str, device: str | None) -> str:
    """In a fresh process: ``"ADDED_MIB PEAK_MIB"`` of one forward of ``kind`` (module docstring)."""
    from at_probe.models.loading import load_tokenizer
    from at_probe.runs.memory import release_freed_memory

    tokens = long_tokens(load_tokenizer(model_name), n_tokens, Path(data))
    run = forward(kind, model_name, rows, device)
    with torch.inference_mode():  # weights paged in (mmap slices), compiled probe sums loaded: not counted
        run(tokens[:, :16])
    release_freed_memory()
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) restarts from the current size
    with torch.inference_mode():
        run(tokens)
    peak = _status_kib("VmHWM")
    return f"{(peak - before) / 1024:.1f} {peak / 1024:.1f}"


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def memory(kind: str, model_name: str, n_tokens: int, rows: int, data: Path, device: str | None) -> dict[str, float]:
    """Peak memory a forward of ``kind`` adds, and the peak in all (MiB), in a fresh process."""
    code = ("from at_probe.cli.bench_context import child_peak\n"
            f"print('PEAK', child_peak({kind!r}, {model_name!r}, {n_tokens}, {rows}, {str(data)!r}, {device!r}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "MPLBACKEND": "Agg"})
    added, peak = next(l for l in out.stdout.splitlines() if l.startswith("PEAK")).split()[1:]
    return {"added_mib": float(added), "peak_mib": float(peak)}


def paired_times(runs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each run, ``repeats`` rounds interleaved (after one warm-up round), round ``r``
    in the ``r``-th order of the runs (``itertools.permutations``, cycled), so that over the
    rounds each run follows each other one alike and none always runs after the same one."""
    import itertools
    import time

    times: dict[str, list[float]] = {k: [] for k in runs}
    orders = list(itertools.permutations(runs))
    for round_ in range(repeats + 1):
        for key in orders[round_ % len(orders)]:
            fn = runs[key]
            t0 = time.perf_counter()
            with torch.inference_mode():
                fn()
            if round_:
                times[key].append(time.perf_counter() - t0)
    return times


def ratios(times: dict[str, list[float]], over: str, of: str) -> dict[str, float]:
    """Median, min and max of the per-round ratios ``of / over``."""
    r = [a / b for a, b in zip(times[of], times[over])]
    return {"ratio_median": statistics.median(r), "ratio_min": min(r), "ratio_max": max(r)}


def bench_length(model_name: str, n_tokens: int, rows: int, data: Path, device: str | None, repeats: int,
                 with_stock: bool, runs: dict[str, Callable[[torch.Tensor], Any]]) -> dict[str, Any]:
    """Time ratios (this process, ``runs`` built once) and memory (fresh processes) at one length."""
    from at_probe.models.loading import load_tokenizer

    tokens = long_tokens(load_tokenizer(model_name), n_tokens, data)
    chosen = {k: (lambda fn=fn: fn(tokens)) for k, fn in runs.items() if with_stock or k != "stock"}
    times = paired_times(chosen, repeats)
    out: dict[str, Any] = {
        "tokens": n_tokens, "rows": rows, "repeats": repeats,
        "seconds_median": {k: statistics.median(v) for k, v in times.items()},
        "time": {"chunked_probe_over_sdpa": ratios(times, "sdpa", "chunked_probe"),
                 "chunked_over_sdpa": ratios(times, "sdpa", "chunked"),
                 "probe_over_chunked": ratios(times, "chunked", "chunked_probe")},
    }
    if "stock" in times:
        out["time"]["stock_over_sdpa"] = ratios(times, "sdpa", "stock")
    mem = {k: memory(k, model_name, n_tokens, rows, data, device) for k in KINDS if with_stock or k != "stock"}
    out["memory"] = mem
    out["memory_ratios"] = {f"{k}_over_sdpa": {"added": mem[k]["added_mib"] / mem["sdpa"]["added_mib"],
                                               "peak": mem[k]["peak_mib"] / mem["sdpa"]["peak_mib"]}
                            for k in mem if k != "sdpa"}
    return out


def run(model_name: str, lengths: list[int], rows: int, data: Path, device: str | None, repeats: int,
        stock_up_to: int) -> dict[str, Any]:
    """Every length (printed as it finishes); the forwards are loaded once for the time ratios."""
    runs = {k: forward(k, model_name, rows, device) for k in KINDS}
    results: dict[str, Any] = {"model": model_name, "rows": rows, "threads": torch.get_num_threads(),
                               **provenance(), "lengths": {}}
    for n in lengths:
        r = results["lengths"][str(n)] = bench_length(model_name, n, rows, data, device, repeats, n <= stock_up_to, runs)
        t, m = r["time"], r["memory_ratios"]
        print(f"{n:>6} tokens  time: chunked+probe {t['chunked_probe_over_sdpa']['ratio_median']:.2f}x SDPA, "
              f"chunked {t['chunked_over_sdpa']['ratio_median']:.2f}x, probe {t['probe_over_chunked']['ratio_median']:.3f}x "
              f"chunked" + (f", stock {t['stock_over_sdpa']['ratio_median']:.2f}x" if "stock_over_sdpa" in t else "")
              + f"  | added memory: chunked+probe {m['chunked_probe_over_sdpa']['added']:.2f}x SDPA, chunked "
              f"{m['chunked_over_sdpa']['added']:.2f}x" + (f", stock {m['stock_over_sdpa']['added']:.2f}x"
                                                            if "stock_over_sdpa" in m else ""), flush=True)
    return results


def provenance() -> dict[str, Any]:
    """What the numbers were measured with: the commit (whether tracked files had changes, and
    which: ``uncommitted_paths``), the CPU and the instruction set torch's kernels and the
    probe's compiled sums were built for (``cpu_capability``: ``AVX512``, ``AVX2`` or
    ``DEFAULT``), torch and transformers versions."""
    import platform

    from at_probe.models.loading import library_versions

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent)
        except OSError:  # no git here
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    cpu = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    commit, changed = git("rev-parse", "HEAD"), git("diff", "--name-only", "HEAD")
    paths = None if changed is None else changed.splitlines()
    return {"commit": commit or "unknown", "uncommitted_changes": None if paths is None else bool(paths),
            "uncommitted_paths": paths,
            "cpu": cpu, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "versions": library_versions()}


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def token_counts(text: str) -> list[int]:
    """``--long-context``: distinct positive token counts, comma-separated."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1 or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of distinct positive token counts")
    return values



def add_arguments(p: Any, data: Path) -> None:
    """``bench.py``'s ``--long-context`` flags."""
    from at_probe.cli.args import existing_dir, nonnegative_int, positive_int

    p.add_argument("--long-context", type=token_counts, default=None, metavar="T1,T2,...",
                   help="the chunked-attention budgets at these prompt lengths instead "
                        "(at_probe.cli.bench_context: vs an HF SDPA forward, time here, memory in fresh processes)")
    p.add_argument("--attention-rows", type=positive_int, default=512,
                   help="query rows per attention block: with --long-context (default 512), or alone: "
                        "the prefill ratios under chunked attention")
    p.add_argument("--stock-up-to", type=nonnegative_int, default=4096,
                   help="with --long-context: also time the stock (unchunked) bridge up to this length (default 4096)")
    p.add_argument("--data", type=existing_dir, default=data,
                   help="with --long-context: the XSum release, whose development documents give the tokens")


def run_long_context(p: Any, args: argparse.Namespace, given: frozenset[str], finish: Callable[..., int]) -> int:
    """``bench.py --long-context``: run every length, write ``--json``; exit 2 on a bad input."""
    from at_probe.cli.args import UsageError, check_context, prog
    from at_probe.models.loading import load_tokenizer, model_shape

    p.refuse(given, ("--decode-only", "--memory-only", "--tokens", "--xsum", "--profile"),
             "is not used with --long-context")
    torch.manual_seed(0)
    try:  # the inputs, before minutes of loading and timing
        check_context(args.long_context, model_shape(args.model), args.model, "--long-context")
        long_tokens(load_tokenizer(args.model), max(args.long_context), args.data)
    except (FileNotFoundError, ValueError, OSError) as err:
        print(f"{prog('bench.py')}: error: {err}", file=sys.stderr)
        return 2
    try:
        results = run(args.model, args.long_context, args.attention_rows, args.data, args.device,
                      args.repeats, args.stock_up_to)
    except (UsageError, OSError) as err:  # a bug keeps its traceback
        print(f"{prog('bench.py')}: error: {err}", file=sys.stderr)
        return 2
    return finish(results, args.json)
