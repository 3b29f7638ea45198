"""Memory measurements of ``bench.py``: peak RSS of fresh processes on the CPU (``flow.py`` vs a
plain forward, its conditions in a row vs alone) and peak allocated memory on a GPU."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import torch

REPO = Path(__file__).resolve().parents[2]


def peak_rss_mb(code: str) -> float:
    """Peak RSS (MiB) of a fresh Python process running ``code`` (printed by the child)."""
    wrapped = code + "\nimport resource; print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    out = subprocess.run([sys.executable, "-c", wrapped], capture_output=True, text=True, check=True,
                         cwd=REPO, env={**os.environ, "MPLBACKEND": "Agg"})
    line = next(l for l in out.stdout.splitlines() if l.startswith("PEAK_RSS_KB"))
    return int(line.split()[1]) / 1024


def memory_ratio(args: argparse.Namespace, source: str, *extra: str) -> dict[str, float]:
    """flow.py (with ``extra`` flags) vs a plain forward, same model and tokens, each in its own process."""
    common = (f"import torch\nfrom at_probe.models.loading import DEFAULT_MODEL, load_model, random_llama\n"
              f"m = load_model({args.model!r}, device={args.device!r})\n")
    plain = common + (
        f"from at_probe.cli.bench import document_tokens\nfrom pathlib import Path\n"
        f"toks, _ = document_tokens(m, {args.tokens}, Path({str(args.xsum)!r}))\n"
        f"with torch.inference_mode(): m(toks)\n")
    flow = ("from at_probe.cli import flow\n"
            f"assert flow.main(['--model', {args.model!r}, '--xsum', {str(args.xsum)!r}, '--index', "
            f"{source.split('#')[-1]!r}, '--max-tokens', '{args.tokens}', '--knockout', '0', "
            f"'--out', '/tmp/at_probe_bench_flow', *{list(extra)!r}]) == 0\n")
    a, b = peak_rss_mb(plain), peak_rss_mb(flow)
    return {"plain_forward_peak_rss_mib": a, "flow_py_peak_rss_mib": b, "ratio": b / a}


def conditions_memory(args: argparse.Namespace, source: str) -> dict[str, Any]:
    """Peak RSS of ``flow.py --transition both --rollout`` (four conditions, knockout on) vs the
    largest of its conditions run alone with the same flags, each in a fresh process: the
    conditions run in a row must not pile up (issue #24)."""
    def flow_peak(*flags: str) -> float:
        return peak_rss_mb("from at_probe.cli import flow\n"
                           f"assert flow.main(['--model', {args.model!r}, '--xsum', {str(args.xsum)!r}, '--index', "
                           f"{source.split('#')[-1]!r}, '--max-tokens', '{args.memory_tokens}', '--out', "
                           f"'/tmp/at_probe_bench_conditions', *{list(flags)!r}]) == 0\n")

    alone = {name: flow_peak("--transition", name, *(("--no-placebo",) if name == "paper" else ()), "--rollout")
             for name in ("none", "paper", "sra")}
    together = flow_peak("--transition", "both", "--rollout")
    return {"tokens": args.memory_tokens, "alone_peak_rss_mib": alone, "both_peak_rss_mib": together,
            "ratio": together / max(alone.values())}


def cuda_memory_ratio(plain: Callable[[], Any], treated: Callable[[], Any]) -> dict[str, float]:
    """Peak allocated GPU memory (MiB, weights included) of ``treated`` vs ``plain``."""
    peaks = []
    for fn in (plain, treated):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        resident = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        peaks.append((torch.cuda.max_memory_allocated() / 2**20, resident / 2**20))
    (plain_peak, resident), (treated_peak, _) = peaks
    return {"plain_peak_mib": plain_peak, "treated_peak_mib": treated_peak, "resident_mib": resident,
            "ratio": treated_peak / plain_peak,
            "activation_ratio": (treated_peak - resident) / max(plain_peak - resident, 1e-9)}
