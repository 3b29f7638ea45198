"""The bench's report: per-prompt paired differences between conditions, with intervals.

Records of one or more run directories (``longctx.py``) are pooled by (prompt, setting); the
passkey prompts of the secondary run are the first ones of the primary run, so comparisons
pair them across runs. A role's value for a prompt is its setting's score, or the mean of its
draws' scores (a placebo's seeds); a comparison uses the prompts scored under every setting of
both roles (``n``), and says how many others it left out. Pooled over lengths, each length
counts alike (the mean of the per-length means, whatever their prompt counts). Intervals are
percentile bootstraps over prompts, stratified by length when lengths are pooled
(``at_probe.runs.stats``). The accuracy and needle tables compare conditions on the same
prompts: in each (task, length) cell, those scored under every condition the cell holds.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from at_probe.longctx.conditions import (
    ALL_ROLES,
    PRIMARY,
    PRIMARY_LENGTHS,
    PRIMARY_LEVEL,
    PRIMARY_PROMPTS,
    PRIMARY_TASK,
    PEERS,
    SECONDARY,
    Comparison,
)
from at_probe.runs.stats import bootstrap_mean, stratified_bootstrap_mean, stratified_interval

METRICS = ("exact", "logprob")
"""Exact match (primary; 0 or 1 per prompt) and the answer's log-probability (nats)."""
NEEDLE_FIELDS = ("needle_mass", "needle_flow")
"""Per-layer needle measures every record holds (``at_probe.longctx.scoring``)."""
KNOCKOUT = "needle_knockout"
"""The per-layer knockout estimate, held by the records of runs made with it."""


def pool_records(runs: Iterable[list[dict[str, Any]]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(prompt id, setting) -> record, over runs; a pair scored in two runs must agree.

    Raises:
        ValueError: two runs disagree on a pair's exact match or log-probability.
    """
    pooled: dict[tuple[str, str], dict[str, Any]] = {}
    for records in runs:
        for r in records:
            key = (r["doc_id"], r["setting"])
            old = pooled.setdefault(key, r)
            if old is not r and (old["exact"] != r["exact"] or abs(old["logprob"] - r["logprob"]) > 1e-3):
                raise ValueError(f"two runs disagree on {key}: {old['logprob']} vs {r['logprob']}")
    return pooled


def role_values(pooled: dict[tuple[str, str], dict[str, Any]], role: str, metric: str) -> dict[str, Any]:
    """Prompt id -> the role's value (mean over its settings), for prompts scored under all of
    them (and, for a per-layer field, holding it): a float, or an array ``[layer]`` for a list field."""
    settings = ALL_ROLES[role]
    by_prompt: dict[str, list[Any]] = defaultdict(list)
    for (prompt, setting), r in pooled.items():
        if setting in settings and metric in r:
            by_prompt[prompt].append(r[metric])
    return {p: (np.mean(np.array(v, dtype=float), axis=0) if isinstance(v[0], list) else float(np.mean(v)))
            for p, v in by_prompt.items() if len(v) == len(settings)}


def _cells(pooled: dict[tuple[str, str], dict[str, Any]]) -> dict[str, tuple[str, int, float]]:
    return {r["doc_id"]: (r["task"], int(r["length"]), float(r["depth"])) for r in pooled.values()}


def paired(pooled: dict[tuple[str, str], dict[str, Any]], comparison: Comparison, metric: str, task: str,
           lengths: Sequence[int]) -> dict[str, Any]:
    """``comparison`` on ``task`` over ``lengths`` (pooled, stratified by length): mean paired
    difference, 95% interval, prompts per length, and prompts of one role only (left out)."""
    cells = _cells(pooled)
    a, b = role_values(pooled, comparison.treated, metric), role_values(pooled, comparison.control, metric)
    groups, per_length = [], {}
    for length in lengths:
        prompts = sorted(p for p in set(a) & set(b) if cells[p][:2] == (task, length))
        groups.append(np.array([a[p] - b[p] for p in prompts]))
        per_length[str(length)] = len(prompts)
    only_one = sum(1 for p in set(a) ^ set(b) if cells[p][0] == task and cells[p][1] in lengths)
    estimate = (stratified_bootstrap_mean(groups, weights="groups") if len(lengths) > 1
                else bootstrap_mean(groups[0]))
    return {"comparison": comparison.label, "metric": metric, "task": task, "lengths": list(lengths),
            **estimate.to_dict(), "n_per_length": per_length, "n_one_role_only": only_one,
            "_groups": groups}


def primary(pooled: dict[tuple[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    """The declared primary comparisons with their 97.5% intervals and the plain answer, which
    is final only once every length has ``PRIMARY_PROMPTS`` paired prompts (``complete``)."""
    out = []
    for comparison in PRIMARY:
        row = paired(pooled, comparison, "exact", PRIMARY_TASK, PRIMARY_LENGTHS)
        groups = row.pop("_groups")
        lo, hi = stratified_interval(groups, PRIMARY_LEVEL, weights="groups") if row["n"] >= 2 else (None, None)
        row["ci97_5"] = [lo, hi]
        row["complete"] = all(n >= PRIMARY_PROMPTS for n in row["n_per_length"].values())
        verdict = ("not enough prompts" if lo is None else
                   "yes, better" if lo > 0 else "yes, worse" if hi < 0 else "no detectable effect")
        row["answer"] = verdict if row["complete"] else f"incomplete run (so far: {verdict})"
        out.append(row)
    return out


def _shared(pooled: dict[tuple[str, str], dict[str, Any]], field: str) -> dict[str, dict[str, Any]]:
    """Role -> prompt -> value of ``field``, each (task, length) cell cut to the prompts that
    every role with values in the cell has (conditions then compare on the same prompts)."""
    cells = _cells(pooled)
    values = {role: role_values(pooled, role, field) for role in ALL_ROLES}
    common: dict[tuple[str, int], set[str]] = {}
    for per_prompt in values.values():
        by_cell: dict[tuple[str, int], set[str]] = defaultdict(set)
        for prompt in per_prompt:
            by_cell[cells[prompt][:2]].add(prompt)
        for cell, prompts in by_cell.items():
            common[cell] = common[cell] & prompts if cell in common else prompts
    return {role: {p: v for p, v in per_prompt.items() if p in common[cells[p][:2]]}
            for role, per_prompt in values.items()}


def accuracy(pooled: dict[tuple[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    """Exact-match rate per (task, length, depth, role) on the prompts every role of the
    (task, length) cell was scored on, for the figure and the tables."""
    cells = _cells(pooled)
    rows = []
    for role, values in _shared(pooled, "exact").items():
        groups: dict[tuple[str, int, float], list[float]] = defaultdict(list)
        for prompt, v in values.items():
            groups[cells[prompt]].append(v)
        rows += [{"task": t, "length": l, "depth": d, "condition": role, "accuracy": float(np.mean(v)), "n": len(v)}
                 for (t, l, d), v in sorted(groups.items())]
    return rows


def needle(pooled: dict[tuple[str, str], dict[str, Any]], fields: Sequence[str] = NEEDLE_FIELDS) -> list[dict[str, Any]]:
    """Mean of per-layer ``fields`` per (task, length, role, layer), on the prompts every role
    of the (task, length) cell has them for (a placebo: the mean of its draws per prompt)."""
    cells = _cells(pooled)
    shared = {field: _shared(pooled, field) for field in fields}
    rows = []
    for role in ALL_ROLES:
        per_cell: dict[tuple[str, int], list[np.ndarray]] = defaultdict(list)
        for prompt in shared[fields[0]][role]:
            if all(prompt in shared[f][role] for f in fields):
                per_cell[cells[prompt][:2]].append(np.stack([shared[f][role][prompt] for f in fields]))
        for (task, length), arrays in sorted(per_cell.items()):
            mean = np.mean(arrays, axis=0)
            rows += [{"task": task, "length": length, "condition": role, "layer": l,
                      **{f: float(mean[i, l]) for i, f in enumerate(fields)}, "n": len(arrays)}
                     for l in range(mean.shape[1])]
    return rows


def prompt_lengths(pooled: dict[tuple[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    """Tokens of prompt and answer per (task, length) cell: how far short of the length the
    prompts fall (the haystack is cut at a sentence end, and a long stretch without one can
    leave a prompt well short)."""
    tokens = {r["doc_id"]: (r["task"], int(r["length"]), r["prompt_tokens"] + r["answer_tokens"])
              for r in pooled.values()}
    cells: dict[tuple[str, int], list[int]] = defaultdict(list)
    for task, length, n in tokens.values():
        cells[(task, length)].append(n)
    return [{"task": t, "length": l, "prompts": len(v), "min": int(min(v)), "median": float(np.median(v)),
             "max": int(max(v)), "short_by_over_5pct": sum(n < 0.95 * l for n in v)}
            for (t, l), v in sorted(cells.items())]


def report(pooled: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    """The whole report: primary, every declared comparison per task (pooled and per length),
    accuracy per cell and role, the needle's attention per layer, the knockout estimate per
    layer where records hold it, and the prompts' token counts per cell."""
    cells = _cells(pooled)
    tasks = sorted({c[0] for c in cells.values()})
    comparisons = []
    for comparison in (*PRIMARY, *SECONDARY, *PEERS):
        for task in tasks:
            lengths = sorted({c[1] for c in cells.values() if c[0] == task})
            for metric in METRICS:
                for scope in ([lengths] if len(lengths) > 1 else []) + [[l] for l in lengths]:
                    row = paired(pooled, comparison, metric, task, scope)
                    row.pop("_groups")
                    if row["n"]:
                        comparisons.append(row)
    return {"n_records": len(pooled), "prompts": len(cells), "primary": primary(pooled),
            "comparisons": comparisons, "accuracy": accuracy(pooled), "needle": needle(pooled),
            "needle_knockout": needle(pooled, (KNOCKOUT,)), "prompt_lengths": prompt_lengths(pooled)}
