"""Choosing settings on development documents: mean NLL per setting, the held-out
selection, the roles of a test run, and reading a selection back.

A development sweep's ``selection.json``, read back by the runs that use its choices.

``xsum_select.py`` and ``alternatives_select.py`` choose settings on development documents and
write ``selection.json`` beside their ``manifest.json``. A test run (``xsum_eval.py
--selection``) or a corpus flow (``flow.py --selection``) must use choices made for its own
model and data: ``read_selection`` checks the sweep's manifest against what the caller expects
and refuses anything else with a ``UsageError`` (one line, exit code 2).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from at_probe.interventions import registry
from at_probe.runs.errors import UsageError
from at_probe.runs.runfiles import MANIFEST_DEFAULTS, json_sha256
from at_probe.xsum.settings import (  # noqa: F401  (ALTERNATIVES_GRID: importable here as before)
    ALTERNATIVES,
    ALTERNATIVES_GRID,
    PAPER_EXAMPLE,
    SettingError,
    parse_setting,
    placebo_of,
    placebo_twins,
)


def _mean_nll(rows: list[dict[str, Any]]) -> tuple[dict[str, float], int]:
    """Mean ``summary_nll`` per setting over the documents scored under every setting.

    Raises:
        ValueError: a ``summary_nll`` that is not a finite number (named with its setting and
            document: a NaN mean would otherwise win every ``min``), or no document scored
            under every setting.
    """
    import math
    import numbers

    import numpy as np

    by_setting: dict[str, dict[str, float]] = {}
    for r in rows:
        nll = r["summary_nll"]
        if isinstance(nll, bool) or not isinstance(nll, numbers.Real) or not math.isfinite(nll):
            raise ValueError(f"setting {r['setting']!r} has summary_nll {nll!r} on document {r['doc_id']}: "
                             "selection needs a finite score for every document")
        by_setting.setdefault(r["setting"], {})[r["doc_id"]] = float(nll)
    docs = set.intersection(*(set(v) for v in by_setting.values())) if by_setting else set()
    if not docs:
        raise ValueError("no document is scored under every development setting")
    return {name: float(np.mean([v[d] for d in sorted(docs)])) for name, v in by_setting.items()}, len(docs)


def minus_baseline(rows: list[dict[str, Any]], docs: list[str]) -> dict[str, dict[str, Any]]:
    """Each setting's paired ``summary_nll`` difference from the baseline on ``docs``: mean and
    bootstrap 95% interval over documents (``Estimate.to_dict()``).

    Raises:
        ValueError: a NaN or infinite score (named with its setting; never left out).
    """
    import numpy as np

    from at_probe.runs.stats import bootstrap_mean

    table: dict[str, dict[str, float]] = {}
    for r in rows:
        table.setdefault(r["setting"], {})[r["doc_id"]] = r["summary_nll"]
    base = np.array([table["baseline"][d] for d in docs], dtype=float)
    out = {}
    for name, v in table.items():
        try:
            diff = np.array([v[d] for d in docs], dtype=float) - base
            out[name] = bootstrap_mean(diff, missing="raise").to_dict()
        except ValueError as err:
            raise ValueError(f"summary_nll of {name!r} minus the baseline: {err}") from None
    return out


def select_settings(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The paper and SRA settings with the lowest mean ``summary_nll`` on the development rows.

    Only documents scored under every setting count, so every mean is over the same documents.
    Ties go to the setting listed first (the grid's order).

    Args:
        rows: ``{"doc_id", "setting", "summary_nll"}`` records of the development sweep.

    Returns:
        ``{"paper": name, "sra": name, "n_documents": int, "mean_nll": {setting: float}}``.

    Raises:
        ValueError: a ``summary_nll`` that is not finite (the message names the setting), no
            document scored under every setting, or no paper or SRA setting.
    """
    mean, n_docs = _mean_nll(rows)

    def best(kind: str) -> str:
        names = [n for n in mean if n.startswith(kind + ":")]
        if not names:
            raise ValueError(f"the development sweep has no {kind} setting")
        return min(names, key=lambda n: mean[n])

    return {"paper": best("paper"), "sra": best("sra"), "n_documents": n_docs, "mean_nll": mean}


def setting_roles(selection: dict[str, Any]) -> dict[str, str]:
    """The test run's settings by role (a setting may fill two roles).

    A transitions' selection (``{"paper", "sra"}``): ``baseline``, ``paper_example``,
    ``paper_selected``, ``placebo_example``, ``placebo_selected``, ``sra_selected``.
    An alternatives' selection (``{"selected": {method: setting}, "profiles"}``):
    ``baseline``, then ``<method>_selected`` for each method and ``<method>_<suffix>`` for each
    placebo role its method declares (``at_probe.interventions.registry.Placebo.roles``) where the
    setting has one (``Placebo.applies``): ``<method>_placebo`` for every method with a placebo
    (not adaptive temperature and temperature, nor a transition part without ``move``), and for emphasis also
    ``emphasis_span_placebo``, a random span of the emphasised part's length (the same setting as
    ``emphasis_placebo`` when the instruction is emphasised; random heads are the document's
    default placebo).
    """
    if "selected" in selection:
        profiles = selection.get("profiles")
        roles = {"baseline": "baseline"}
        for method, setting in selection["selected"].items():
            roles[f"{method}_selected"] = setting
            for suffix, twin in placebo_twins(setting, profiles).items():
                roles[f"{method}_{suffix}"] = twin
        return roles
    example = parse_setting(PAPER_EXAMPLE)[0]
    return {"baseline": "baseline", "paper_example": example, "paper_selected": selection["paper"],
            "placebo_example": placebo_of(example), "placebo_selected": placebo_of(selection["paper"]),
            "sra_selected": selection["sra"]}


PLACEBO_ROLES: frozenset[str] = frozenset({"placebo_example", "placebo_selected", *(
    f"{m}_{suffix}" for m in ALTERNATIVES if (placebo := registry.method(m).placebo)
    for suffix in placebo.roles)})
"""The roles of ``setting_roles`` that are controls drawn at random (a ``seed``) for the built-in
methods; ``placebo_draws`` asks the registry, so a method registered later counts too."""


def placebo_draws(roles: dict[str, str], seeds: int, profiles: dict[str, Any] | None = None
                  ) -> dict[str, list[str]]:
    """Each placebo role's settings for seeds ``0 .. seeds - 1`` (canonical names; seed 0 first,
    the role's own setting), so a report can pool independent draws of the control. A placebo
    role is one whose setting's kind is a registered method's placebo twin.

    Raises:
        SettingError: ``seeds < 1``, or a placebo role whose setting has no seed.
    """
    if seeds < 1:
        raise SettingError(f"seeds must be >= 1, got {seeds}")
    out = {}
    for role, setting in roles.items():
        kind, _, body = setting.partition(":")
        if not registry.is_placebo(kind):
            continue
        params = [p for p in body.split(",") if p and not p.startswith("seed=")]
        if len(params) == len(body.split(",")):
            raise SettingError(f"the placebo role {role} has no seed in {setting!r}")
        out[role] = [parse_setting(f"{kind}:{','.join([*params, f'seed={s}'])}", profiles)[0]
                     for s in range(seeds)]
        if out[role][0] != setting:
            raise SettingError(f"the placebo role {role} is {setting!r}, not seed 0 ({out[role][0]!r})")
    return out


def canonical_selection(selection: dict[str, Any]) -> dict[str, Any]:
    """A selection with its chosen settings rewritten as canonical names (profiles kept)."""
    profiles = selection.get("profiles")
    if "selected" in selection:
        return {"selected": {m: parse_setting(v, profiles)[0] for m, v in selection["selected"].items()},
                "profiles": profiles}
    return {"paper": parse_setting(selection["paper"])[0], "sra": parse_setting(selection["sra"])[0]}


def run_settings(selection: dict[str, Any]) -> list[str]:
    """The test run's settings (canonical names, each once): the values of ``setting_roles``."""
    return list(dict.fromkeys(setting_roles(selection).values()))


def select_alternatives(rows: list[dict[str, Any]], methods: Sequence[str]) -> dict[str, Any]:
    """Per method, the setting with the lowest mean ``summary_nll`` over documents scored under
    every setting (ties: the first listed). Returns ``{"selected", "n_documents", "mean_nll"}``.

    Raises:
        ValueError: as ``select_settings`` (a non-finite ``summary_nll`` names its setting), a
            method that is not a registered setting kind, or a method without a setting.
    """
    for method in methods:  # an unknown one: the registered methods and the nearest
        registry.method(method)
    means, n_docs = _mean_nll(rows)
    selected = {}
    for method in methods:
        names = [n for n in means if n.split(":", 1)[0] == method]
        if not names:
            raise ValueError(f"the development sweep has no {method} setting")
        selected[method] = min(names, key=lambda n: means[n])
    return {"selected": selected, "n_documents": n_docs, "mean_nll": means}


# ---------------------------------------------------------------------------------------------
# Reading a selection back
# ---------------------------------------------------------------------------------------------

def read_selection(path: Path, expected: dict[str, Any]) -> dict[str, Any]:
    """A development sweep's ``selection.json``, checked against the sweep's manifest beside it.

    Args:
        path: the ``selection.json`` of an ``xsum_select.py`` or ``alternatives_select.py`` run.
        expected: manifest keys and the values this run needs (e.g. ``model``, ``bucket``,
            ``data_sha256``, ``max_new_tokens``).

    Raises:
        UsageError: not a selection file of a development sweep; a selection made for another
            value of a key of ``expected`` (the keys named); ``test_settings`` that are not what
            its choices imply (a hand-edited file, or one written before a role was added).
    """
    try:
        selection = json.loads(path.read_text())
        manifest = json.loads((path.parent / "manifest.json").read_text())
        implied = run_settings(canonical_selection(selection))
        tested = [parse_setting(s, selection.get("profiles"))[0] for s in selection["test_settings"]]
    except (OSError, KeyError, TypeError, json.JSONDecodeError, SettingError) as err:
        raise UsageError(f"{path} is not the selection.json of a development sweep "
                         f"(xsum_select.py, alternatives_select.py): {err!r}") from None
    if manifest.get("split") != "development":
        raise UsageError(f"{path.parent} is not a development sweep (split {manifest.get('split')!r})")
    # an option the sweep's manifest predates was at its default there (MANIFEST_DEFAULTS)
    differs = [k for k, v in expected.items() if manifest.get(k, MANIFEST_DEFAULTS.get(k)) != v]
    if differs:
        raise UsageError(f"{path} was chosen for another {', '.join(differs)} "
                         f"({', '.join(f'{k}={manifest.get(k)!r}' for k in differs)})")
    if tested != implied:
        if set(tested) < set(implied):  # written before a role was added (emphasis_span_placebo)
            new = sorted(set(implied) - set(tested))
            raise UsageError(f"{path} was written by an older at_probe (no {new}): re-run its development "
                             f"script on {path.parent} to refresh it (nothing is recomputed)")
        raise UsageError(f"{path}: test_settings {tested} are not those of its choices {implied}")
    return selection


def choices_sha256(selection: dict[str, Any]) -> str:
    """Hash of what a selection's settings do: the chosen settings and the development profiles
    (an emphasis setting's name does not say which heads it steers)."""
    return json_sha256(canonical_selection(selection))
