"""The benches' timing rounds: no forward always runs right after the same other one (the
allocator and caches it leaves behind would bias one side), and results say what measured them."""

from __future__ import annotations

from collections import Counter

import torch

from at_probe.cli.bench import paired_ratio
from at_probe.cli.bench_context import paired_times, provenance


def test_long_context_rounds_take_every_order_in_turn():
    calls: list[str] = []
    runs = {k: (lambda k=k: calls.append(k)) for k in ("sdpa", "chunked_probe", "chunked")}
    times = paired_times(runs, repeats=6)
    rounds = [tuple(calls[i : i + 3]) for i in range(0, len(calls), 3)]
    assert len(set(rounds[:6])) == 6 and rounds[6] == rounds[0]  # all six orders, then again
    follows = Counter((a, b) for r in rounds[:6] for a, b in zip(r, r[1:]))
    assert set(follows.values()) == {2}  # each run right after each other one alike
    assert {k: len(v) for k, v in times.items()} == {"sdpa": 6, "chunked_probe": 6, "chunked": 6}


def test_decode_step_rounds_alternate_which_runs_first(monkeypatch):
    import contextlib

    from at_probe.cli import bench

    calls: list[str] = []

    def timed(model, tokens, steps, applied, device):
        calls.append("plain" if applied is contextlib.nullcontext else "edit")
        return 1.0

    monkeypatch.setattr(bench, "decode_step_seconds", timed)
    bench.decode_step_ratios(None, None, {"e": object()}, 2, 3, torch.device("cpu"))
    assert calls == ["plain", "edit", "edit", "plain", "plain", "edit", "edit", "plain"]


def test_paired_ratios_alternate_which_runs_first():
    calls: list[str] = []
    paired_ratio(lambda: calls.append("plain"), lambda: calls.append("treated"), 4, torch.device("cpu"))
    assert calls == ["plain", "treated", "plain", "treated", "treated", "plain", "plain", "treated",
                     "treated", "plain"]


def test_results_name_the_commit_cpu_and_versions(monkeypatch):
    import subprocess

    info = provenance()
    assert set(info) == {"commit", "uncommitted_changes", "uncommitted_paths", "cpu", "cpu_capability",
                         "versions"}
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert len(info["commit"]) == 40 or info["commit"] == "unknown"
    assert info["versions"]["torch"] == torch.__version__ and info["cpu"]

    real_run = subprocess.run

    def changed_records(command, **kwargs):
        if command[:2] == ["git", "diff"]:  # a tracked data file changed, as during a long run
            return subprocess.CompletedProcess(command, 0, stdout="figures/run/records.jsonl\n", stderr="")
        return real_run(command, **kwargs)

    monkeypatch.setattr(subprocess, "run", changed_records)
    info = provenance()
    assert info["uncommitted_changes"] and info["uncommitted_paths"] == ["figures/run/records.jsonl"]

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(subprocess, "run", no_git)
    info = provenance()
    assert info["commit"] == "unknown" and info["uncommitted_changes"] is None
    assert info["uncommitted_paths"] is None
