"""A development sweep's ``selection.json``, read back by the runs that use its choices.

``xsum_select.py`` and ``alternatives_select.py`` choose settings on development documents and
write ``selection.json`` beside their ``manifest.json``. A test run (``xsum_eval.py
--selection``) or a corpus flow (``flow.py --selection``) must use choices made for its own
model and data: ``read_selection`` checks the sweep's manifest against what the caller expects
and refuses anything else with a ``UsageError`` (one line, exit code 2).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from at_probe.cliargs import UsageError
from at_probe.runfiles import MANIFEST_DEFAULTS, json_sha256
from at_probe.xsum import SettingError, canonical_selection, parse_setting, run_settings


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
