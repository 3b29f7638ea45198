"""The benches' timing rounds: no forward always runs right after the same other one (the
allocator and caches it leaves behind would bias one side), and results say what measured them."""

from __future__ import annotations

import torch

from at_probe.cli.bench import paired_ratio
from at_probe.cli.bench_context import paired_times, provenance


def test_long_context_rounds_rotate_their_order():
    calls: list[str] = []
    runs = {k: (lambda k=k: calls.append(k)) for k in ("sdpa", "chunked_probe", "chunked")}
    times = paired_times(runs, repeats=3)
    rounds = [calls[i : i + 3] for i in range(0, len(calls), 3)]
    assert rounds == [["sdpa", "chunked_probe", "chunked"], ["chunked_probe", "chunked", "sdpa"],
                      ["chunked", "sdpa", "chunked_probe"], ["sdpa", "chunked_probe", "chunked"]]
    assert {k: len(v) for k, v in times.items()} == {"sdpa": 3, "chunked_probe": 3, "chunked": 3}  # warm-up left out


def test_paired_ratios_alternate_which_runs_first():
    calls: list[str] = []
    paired_ratio(lambda: calls.append("plain"), lambda: calls.append("treated"), 4, torch.device("cpu"))
    assert calls == ["plain", "treated", "plain", "treated", "treated", "plain", "plain", "treated",
                     "treated", "plain"]


def test_results_name_the_commit_cpu_and_versions():
    info = provenance()
    assert set(info) == {"commit", "uncommitted_changes", "cpu", "versions"}
    assert len(info["commit"]) == 40 or info["commit"] == "unknown"
    assert info["versions"]["torch"] == torch.__version__ and info["cpu"]
