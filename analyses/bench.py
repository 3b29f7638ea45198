"""Overhead benchmarks, measured side by side in one process (ratios, not absolute times).

* transition: a forward pass of a ``--tokens``-token document with the paper transition on all
  scheduled layers (and SRA) vs the same forward without it;
* probe: the same forward with a ``FlowProbe`` attached (with and without rollout) vs without;
* memory: peak RSS of ``analyses/flow.py`` on that document (probe passes; knockout off, its
  passes are plain forwards with a band of edited layers), and of the same with the causal map
  by attribution patching (``--attribution``: a backward pass), vs a plain forward of the same
  tokens, each in a fresh subprocess.

Each timing ratio is the median over ``--repeats`` interleaved (paired) runs.

Usage:
    python analyses/bench.py                                   # SmolLM2, CPU
    python analyses/bench.py --model tiny                      # the embedded tiny model
    python analyses/bench.py --model DIR --device cuda         # a local checkpoint on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from at_probe.loading import DEFAULT_MODEL, load_model
from at_probe.probe import FlowProbe
from at_probe.transition import PaperTransition, SRATransition
from at_probe.xsum import bucket_file, load_records

REPO = Path(__file__).resolve().parents[1]
DEFAULT_XSUM = bucket_file(REPO.parent / "shared" / "data" / "xsum-at-release", "1900")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def paired_ratio(plain: Callable[[], Any], treated: Callable[[], Any], repeats: int,
                 device: torch.device) -> dict[str, float]:
    """Median of treated/plain time ratios over interleaved runs (one warm-up each)."""
    plain(), treated()
    ratios, base_times = [], []
    for _ in range(repeats):
        times = []
        for fn in (plain, treated):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - t0)
        base_times.append(times[0])
        ratios.append(times[1] / times[0])
    return {"ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "plain_seconds_median": statistics.median(base_times)}


def document_tokens(model: Any, n_tokens: int, xsum: Path) -> tuple[torch.Tensor, str]:
    """``n_tokens`` tokens of the first XSum document long enough, else of repeated sample text."""
    if xsum.is_file():
        for i, rec in enumerate(load_records(xsum)):
            toks = model.to_tokens(rec["document"])
            if toks.shape[1] >= n_tokens:
                return toks[:, :n_tokens], f"{xsum.name}#{i}"
    from at_probe.loading import SAMPLE_DOCUMENT

    toks = model.to_tokens(SAMPLE_DOCUMENT.read_text() * 8)
    return toks[:, :n_tokens], "sample document repeated"


def peak_rss_mb(code: str) -> float:
    """Peak RSS (MiB) of a fresh Python process running ``code`` (printed by the child)."""
    wrapped = code + "\nimport resource; print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    out = subprocess.run([sys.executable, "-c", wrapped], capture_output=True, text=True, check=True,
                         cwd=REPO, env={**os.environ, "MPLBACKEND": "Agg"})
    line = next(l for l in out.stdout.splitlines() if l.startswith("PEAK_RSS_KB"))
    return int(line.split()[1]) / 1024


def memory_ratio(args: argparse.Namespace, source: str, *extra: str) -> dict[str, float]:
    """flow.py (with ``extra`` flags) vs a plain forward, same model and tokens, each in its own process."""
    common = (f"import torch\nfrom at_probe.loading import DEFAULT_MODEL, load_model\n"
              f"m = load_model({args.model!r}, device={args.device!r})\n")
    plain = common + (
        f"from analyses.bench import document_tokens\nfrom pathlib import Path\n"
        f"toks, _ = document_tokens(m, {args.tokens}, Path({str(args.xsum)!r}))\n"
        f"with torch.inference_mode(): m(toks)\n")
    flow = ("import sys\nsys.path.insert(0, 'analyses')\nimport flow\n"
            f"assert flow.main(['--model', {args.model!r}, '--xsum', {str(args.xsum)!r}, '--index', "
            f"{source.split('#')[-1]!r}, '--max-tokens', '{args.tokens}', '--knockout', '0', "
            f"'--out', '/tmp/at_probe_bench_flow', *{list(extra)!r}]) == 0\n")
    a, b = peak_rss_mb(plain), peak_rss_mb(flow)
    return {"plain_forward_peak_rss_mib": a, "flow_py_peak_rss_mib": b, "ratio": b / a}


def xsum_throughput(model: Any, docs: list[dict], batch_size: int, max_new_tokens: int) -> dict[str, float]:
    """Documents per second of greedy summarisation, batch ``batch_size`` vs batch 1 (same docs)."""
    from at_probe.xsum import summarise

    prompts = [d["document"] for d in docs]
    rates = {}
    summarise(model, prompts[:1], None, max_new_tokens=4)  # warm-up
    for size in (1, batch_size):
        t0 = time.perf_counter()
        for i in range(0, len(prompts), size):
            summarise(model, prompts[i : i + size], None, max_new_tokens=max_new_tokens)
        rates[size] = len(prompts) / (time.perf_counter() - t0)
    return {"docs_per_s_batch_1": rates[1], f"docs_per_s_batch_{batch_size}": rates[batch_size],
            "ratio": rates[batch_size] / rates[1], "documents": len(prompts)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--device", default=None)
    p.add_argument("--tokens", type=int, default=1900)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--xsum", type=Path, default=DEFAULT_XSUM)
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--throughput-docs", type=int, default=16,
                   help="held-out 800-bucket documents for the batch-8 vs batch-1 throughput (0 skips)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    torch.manual_seed(0)
    model = load_model(args.model, device=args.device)
    device = torch.device(model.cfg.device)
    tokens, source = document_tokens(model, args.tokens, args.xsum)
    print(f"model {args.model} on {device}, {tokens.shape[1]} tokens from {source}")

    def plain() -> None:
        with torch.inference_mode():
            model(tokens)

    def hooked(make_pairs: Callable[[], list]) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                model.run_with_hooks(tokens, fwd_hooks=make_pairs())
        return run

    def probed(rollout: bool) -> Callable[[], None]:
        def run() -> None:
            probe = FlowProbe.for_model(model, rollout=rollout)
            with torch.inference_mode():
                model.run_with_hooks(tokens, fwd_hooks=probe.hooks())
                probe.result()
        return run

    results: dict[str, Any] = {"model": args.model, "device": str(device), "tokens": tokens.shape[1],
                               "source": source}
    paper = PaperTransition(alpha=1.0, beta=0.5, intervals_per_layer=2)
    sra = SRATransition()
    results["paper_transition"] = paired_ratio(plain, hooked(lambda: paper.hooks(model)), args.repeats, device)
    results["sra_transition"] = paired_ratio(plain, hooked(lambda: sra.hooks(model)), args.repeats, device)
    results["probe"] = paired_ratio(plain, probed(False), args.repeats, device)
    results["probe_with_rollout"] = paired_ratio(plain, probed(True), args.repeats, device)
    for key in ("paper_transition", "sra_transition", "probe", "probe_with_rollout"):
        r = results[key]
        print(f"{key:<20} {r['ratio_median']:.3f}x  (min {r['ratio_min']:.3f}, max {r['ratio_max']:.3f}; "
              f"plain forward {r['plain_seconds_median'] * 1000:.0f} ms)")
    if not args.skip_memory and args.xsum.is_file() and "#" in source:
        results["memory"] = memory_ratio(args, source)
        results["memory_with_causal_map"] = memory_ratio(args, source, "--attribution")
        for key, label in (("memory", "flow.py peak RSS"), ("memory_with_causal_map", "  + attribution")):
            m = results[key]
            print(f"{label:<20} {m['ratio']:.3f}x  ({m['flow_py_peak_rss_mib']:.0f} MiB vs "
                  f"{m['plain_forward_peak_rss_mib']:.0f} MiB for a plain forward)")
    bucket_800 = bucket_file(args.xsum.parent, "800")
    if args.throughput_docs > 0 and bucket_800.is_file():
        from at_probe.xsum import is_heldout

        docs = [d for d in load_records(bucket_800) if is_heldout(d["id"])][: args.throughput_docs]
        results["xsum_throughput"] = t = xsum_throughput(model, docs, 8, 50)
        print(f"{'xsum batch 8 vs 1':<20} {t['ratio']:.2f}x  ({t['docs_per_s_batch_8']:.2f} vs "
              f"{t['docs_per_s_batch_1']:.2f} documents/s, {t['documents']} documents, 50 new tokens)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
