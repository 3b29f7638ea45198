"""The bench's report: per-prompt paired differences between conditions, with intervals.

Records of one or more run directories (``longctx.py``) are pooled by (prompt, setting); the
passkey prompts of the secondary run are the first ones of the primary run, so comparisons
pair them across runs. A role's value for a prompt is its setting's score, or the mean of its
draws' scores (a placebo's seeds); a comparison uses the prompts scored under every setting of
both roles (``n``), and says how many others it left out. Pooled over lengths, each length
whose cell is complete counts alike (the mean of the per-length means, whatever their prompt
counts): complete means every prompt the runs' manifests plan for both roles is paired
(``plan_of``), so a cell still running joins a pooled row only once it is done and a pooled
number does not change meaning while a run goes on. Intervals are
percentile bootstraps over prompts, stratified by length when lengths are pooled
(``at_probe.runs.stats``). The accuracy and needle tables give each condition over its own
prompts (the primary conditions have 100 per cell, the others 30, a run under way fewer) and,
beside it, the baseline's value on the same prompts: the paired reference.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
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
REPLY = "reply_match"
"""RULER's match of a generated reply (0-1 per prompt), held by the records of runs made with
``--reply-tokens``."""
REPLY_METRICS = (REPLY, "reply_ended")
"""The ``replies`` table's columns: the reply's match, and the share of replies that ended
within the token limit (the others were cut by it)."""
Plan = dict[tuple[str, int], dict[str, int]]
"""(task, length) -> setting -> prompts the runs plan for it (the first that many of the cell)."""
REFERENCE = "baseline"
"""The role whose values on the same prompts the accuracy and needle tables give beside each role's."""


def pool_records(runs: Iterable[list[dict[str, Any]]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(prompt id, setting) -> record, over runs; a pair scored in two runs must agree, and its
    record holds the fields of both (e.g. a knockout estimate only one run recorded).

    Raises:
        ValueError: two runs disagree on a pair's exact match, log-probability or generated reply.
    """
    pooled: dict[tuple[str, str], dict[str, Any]] = {}
    for records in runs:
        for r in records:
            key = (r["doc_id"], r["setting"])
            old = pooled.setdefault(key, r)
            if old is r:
                continue
            if old["exact"] != r["exact"] or abs(old["logprob"] - r["logprob"]) > 1e-3:
                raise ValueError(f"two runs disagree on {key}: {old['logprob']} vs {r['logprob']}")
            if "reply" in old and "reply" in r and old["reply"] != r["reply"]:  # e.g. another --reply-tokens
                raise ValueError(f"two runs disagree on {key}'s reply: {old['reply']!r} vs {r['reply']!r}")
            pooled[key] = {**r, **old}
    return pooled


def plan_of(manifests: Iterable[Mapping[str, Any]]) -> Plan:
    """What run directories plan, from their ``manifest.json`` (``tasks``, ``lengths``,
    ``prompts``, ``settings``): each run scores prompts ``0 .. prompts - 1`` of each of its
    cells under each of its settings (pairs another run holds are skipped, not dropped: the
    union is what counts), so a setting's plan is the most prompts any run gives it."""
    plan: Plan = defaultdict(dict)
    for m in manifests:
        for task in m["tasks"]:
            for length in m["lengths"]:
                for setting in m["settings"]:
                    cell = plan[(task, int(length))]
                    cell[setting] = max(cell.get(setting, 0), int(m["prompts"]))
    return dict(plan)


def planned_pairs(plan: Plan, comparison: Comparison, task: str, length: int) -> int:
    """Prompts of a cell the plan scores under every setting of both roles of ``comparison``."""
    cell = plan.get((task, length), {})
    return min(cell.get(s, 0) for role in (comparison.treated, comparison.control) for s in ALL_ROLES[role])


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
           lengths: Sequence[int], plan: Plan | None = None) -> dict[str, Any]:
    """``comparison`` on ``task`` over ``lengths``: mean paired difference, 95% interval, prompts
    per length, and prompts of one role only at the lengths it uses (left out). Over several
    lengths, the mean of the per-length means (stratified bootstrap) over the lengths whose
    cell is complete: as many paired prompts as ``plan`` has for the comparison
    (``planned_pairs``; None: the records are of finished runs, every cell complete). The
    others, cells still running, are named in ``lengths_left_out``."""
    cells = _cells(pooled)
    a, b = role_values(pooled, comparison.treated, metric), role_values(pooled, comparison.control, metric)
    groups, per_length = {}, {}
    for length in lengths:
        prompts = sorted(p for p in set(a) & set(b) if cells[p][:2] == (task, length))
        groups[length] = np.array([a[p] - b[p] for p in prompts])
        per_length[str(length)] = len(prompts)
    if len(lengths) == 1:
        left_out, estimate = [], bootstrap_mean(groups[lengths[0]])
    else:
        left_out = [l for l, g in groups.items()
                    if not len(g) or (plan is not None and len(g) < planned_pairs(plan, comparison, task, l))]
        estimate = stratified_bootstrap_mean([g for l, g in groups.items() if l not in left_out],
                                             weights="groups")
    kept = [l for l in lengths if l not in left_out]
    only_one = sum(1 for p in set(a) ^ set(b) if cells[p][0] == task and cells[p][1] in kept)
    return {"comparison": comparison.label, "metric": metric, "task": task, "lengths": list(lengths),
            **estimate.to_dict(), "n_per_length": per_length, "lengths_left_out": left_out,
            "n_one_role_only": only_one, "_groups": [groups[l] for l in kept]}


def primary(pooled: dict[tuple[str, str], dict[str, Any]], plan: Plan | None = None) -> list[dict[str, Any]]:
    """The declared primary comparisons with their 97.5% intervals and the plain answer, which
    is final only once every length has ``PRIMARY_PROMPTS`` paired prompts (``complete``);
    ``plan`` as in ``paired``."""
    out = []
    for comparison in PRIMARY:
        row = paired(pooled, comparison, "exact", PRIMARY_TASK, PRIMARY_LENGTHS, plan)
        groups = row.pop("_groups")
        lo, hi = stratified_interval(groups, PRIMARY_LEVEL, weights="groups") if row["n"] >= 2 else (None, None)
        row["ci97_5"] = [lo, hi]
        row["complete"] = all(n >= PRIMARY_PROMPTS for n in row["n_per_length"].values())
        verdict = ("not enough prompts" if lo is None else
                   "yes, better" if lo > 0 else "yes, worse" if hi < 0 else "no detectable effect")
        row["answer"] = verdict if row["complete"] else f"incomplete run (so far: {verdict})"
        out.append(row)
    return out


def accuracy(pooled: dict[tuple[str, str], dict[str, Any]], metrics: Sequence[str] = ("exact",)) -> list[dict[str, Any]]:
    """Exact-match rate (``accuracy``) per (task, length, depth, role) over the role's prompts
    (``n``), with the baseline's on the same prompts beside it (``baseline_accuracy``; None where
    the baseline lacks one of them), for the figure and the tables. Other 0-1 ``metrics``
    (``REPLY_METRICS``) give their means, named ``<metric>`` and ``baseline_<metric>``, over
    the prompts holding the first."""
    names = {m: "accuracy" if m == "exact" else m for m in metrics}
    cells = _cells(pooled)
    reference = {m: role_values(pooled, REFERENCE, m) for m in metrics}
    rows = []
    for role in ALL_ROLES:
        values = {m: role_values(pooled, role, m) for m in metrics}
        groups: dict[tuple[str, int, float], list[str]] = defaultdict(list)
        for prompt in values[metrics[0]]:
            groups[cells[prompt]].append(prompt)
        rows += [{"task": t, "length": l, "depth": d, "condition": role, "n": len(prompts),
                  **{names[m]: _mean_over(values[m], prompts) for m in metrics},
                  **{f"baseline_{names[m]}": _mean_over(reference[m], prompts) for m in metrics}}
                 for (t, l, d), prompts in sorted(groups.items())]
    return rows


def _mean_over(values: dict[str, Any], prompts: Sequence[str]) -> Any:
    """Mean of ``values`` over ``prompts`` (a float, or a list per layer); None if one lacks a value."""
    if not all(p in values for p in prompts):
        return None
    mean = np.mean([values[p] for p in prompts], axis=0)
    return mean.tolist() if mean.ndim else float(mean)


def needle(pooled: dict[tuple[str, str], dict[str, Any]], fields: Sequence[str] = NEEDLE_FIELDS) -> list[dict[str, Any]]:
    """Mean of per-layer ``fields`` per (task, length, role, layer) over the role's prompts that
    hold them all (a placebo: the mean of its draws per prompt), each with the baseline's mean
    on the same prompts beside it (``<field>_baseline``; None where the baseline lacks one)."""
    cells = _cells(pooled)
    reference = {f: role_values(pooled, REFERENCE, f) for f in fields}
    rows = []
    for role in ALL_ROLES:
        values = {f: role_values(pooled, role, f) for f in fields}
        per_cell: dict[tuple[str, int], list[str]] = defaultdict(list)
        for prompt in values[fields[0]]:
            if all(prompt in values[f] for f in fields):
                per_cell[cells[prompt][:2]].append(prompt)
        for (task, length), prompts in sorted(per_cell.items()):
            means = {f: np.mean([values[f][p] for p in prompts], axis=0) for f in fields}
            base = {f: _mean_over(reference[f], prompts) for f in fields}
            rows += [{"task": task, "length": length, "condition": role, "layer": l, "n": len(prompts),
                      **{f: float(means[f][l]) for f in fields},
                      **{f"{f}_baseline": None if base[f] is None else base[f][l] for f in fields}}
                     for l in range(len(means[fields[0]]))]
    return rows


def knockout_totals(pooled: dict[tuple[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (task, length, role), over the prompts with both: the mean first-order estimate of
    knocking the needle out everywhere (``needle_knockout`` summed over layers), the mean exact
    change (``needle_knockout_exact``), and their Pearson correlation over prompts (nats)."""
    cells = _cells(pooled)
    rows = []
    for role in ALL_ROLES:
        estimate, exact = role_values(pooled, role, KNOCKOUT), role_values(pooled, role, f"{KNOCKOUT}_exact")
        per_cell: dict[tuple[str, int], list[tuple[float, float]]] = defaultdict(list)
        for prompt in sorted(set(estimate) & set(exact)):  # prompt order: the same sums in every process
            per_cell[cells[prompt][:2]].append((float(np.sum(estimate[prompt])), exact[prompt]))
        for (task, length), pairs in sorted(per_cell.items()):
            est, ex = np.array(pairs).T
            r = float(np.corrcoef(est, ex)[0, 1]) if len(pairs) > 2 and est.std() > 0 and ex.std() > 0 else None
            rows.append({"task": task, "length": length, "condition": role, "n": len(pairs),
                         "estimate": float(est.mean()), "exact": float(ex.mean()), "pearson_r": r})
    return rows


def openings(pooled: dict[tuple[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    """How replies fail, per (task, length, role) over the prompts whose answer is a space and
    digits (passkey, key-value): ``exact`` (the answer at once), ``opened`` (the reply's first
    token is the answer's, a bare space: ``tokens_right >= 1``) and ``digits_after_opening``
    (the teacher-forced argmax text, ``greedy``, ends with the answer's digits: each digit,
    one token each in SmolLM2's tokenizer, is the top choice once the reply has opened as the
    answer does). Per record, then over prompts (a placebo: the mean of its draws)."""
    cells = _cells(pooled)
    derived: dict[tuple[str, str], dict[str, Any]] = {}
    for key, r in pooled.items():
        digits = r["answer"].strip()
        if r["answer"] == " " + digits and digits.isdigit():
            derived[key] = {"doc_id": r["doc_id"], "exact": float(r["exact"]), "opened": float(r["tokens_right"] >= 1),
                            "digits_after_opening": float(r["greedy"].endswith(digits))}
    fields = ("exact", "opened", "digits_after_opening")
    rows = []
    for role in ALL_ROLES:
        values = {f: role_values(derived, role, f) for f in fields}
        per_cell: dict[tuple[str, int], list[str]] = defaultdict(list)
        for prompt in values["exact"]:
            per_cell[cells[prompt][:2]].append(prompt)
        rows += [{"task": t, "length": l, "condition": role, "n": len(prompts),
                  **{f: float(np.mean([values[f][p] for p in prompts])) for f in fields}}
                 for (t, l), prompts in sorted(per_cell.items())]
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


def report(pooled: dict[tuple[str, str], dict[str, Any]], plan: Plan | None = None) -> dict[str, Any]:
    """The whole report: primary, every declared comparison per task (pooled and per length;
    in exact match, log-probability and, where recorded, the exact knockout's change and the
    generated reply's match), accuracy per cell and role (``replies``: the same for the reply's
    match and the share of replies that ended, where recorded), how replies open (``openings``), the needle's attention per layer,
    the knockout estimate per layer and its total against the exact knockout where records hold
    them, and the prompts' token counts. ``plan``: what the runs plan (``plan_of`` their
    manifests), which says when a cell is complete enough to pool (``paired``)."""
    cells = _cells(pooled)
    tasks = sorted({c[0] for c in cells.values()})
    recorded = [m for m in (f"{KNOCKOUT}_exact", REPLY) if any(m in r for r in pooled.values())]
    metrics = METRICS + tuple(recorded)
    comparisons = []
    for comparison in (*PRIMARY, *SECONDARY, *PEERS):
        for task in tasks:
            lengths = sorted({c[1] for c in cells.values() if c[0] == task})
            for metric in metrics:
                for scope in ([lengths] if len(lengths) > 1 else []) + [[l] for l in lengths]:
                    row = paired(pooled, comparison, metric, task, scope, plan)
                    row.pop("_groups")
                    if row["n"]:
                        comparisons.append(row)
    return {"n_records": len(pooled), "prompts": len(cells), "primary": primary(pooled, plan),
            "comparisons": comparisons, "accuracy": accuracy(pooled), "replies": accuracy(pooled, REPLY_METRICS),
            "needle": needle(pooled),
            "needle_knockout": needle(pooled, (KNOCKOUT,)), "knockout_totals": knockout_totals(pooled),
            "openings": openings(pooled), "prompt_lengths": prompt_lengths(pooled)}
