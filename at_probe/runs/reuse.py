"""Records one run may take from another: the same (document, setting) computed under the same
configuration need not be computed twice.

A run that adds controls to an earlier one (say, more placebo draws beside the settings a test
run already holds) plans settings the earlier run has: the same model, data, options and
batches give the same records. Three steps, each before the next can write anything:

1. ``check_source``, before the new run takes its directory: the source run's manifest agrees
   with the new run's on every key that determines a record (everything but ``RUN_SPECIFIC``,
   the keys that only say which settings a run holds; the documents and batch size included,
   since they decide each document's batch and left padding).
2. ``reused_records``, once the new run owns its directory: the records it still needs, each
   marked ``reused_from`` (the source directory's name, or the name an earlier reuse gave).
3. ``check_model_facts``, once the new run's model is loaded and before its manifest is
   written: the facts the source recorded about its model (prompt style, device, dtype,
   versions) are this machine's too. Records of another torch or device are refused, never
   mixed with records computed here.

Like resuming a run, reuse assumes the code that makes a record is the same in both runs: a
manifest records ``at_probe_version``, not the commit.

Example:
    >>> theirs = check_source(test_run, config, out)              # before owned_run(out)
    >>> with owned_run(out):
    ...     check_manifest(out, config)
    ...     sink = RecordSink(out / "records.jsonl")
    ...     reused = reused_records(test_run, wanted - sink.done)
    ...     # once the model is loaded: check_model_facts(test_run, theirs, described),
    ...     # ensure_manifest(out, {**config, **described}), sink.adopt(reused)
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

from at_probe.runs.errors import UsageError
from at_probe.runs.runfiles import MANIFEST_DEFAULTS, read_jsonl, read_manifest

RUN_SPECIFIC = frozenset({"settings", "roles", "selection_sha256", "roles_subset", "placebo_draws"})
"""Manifest keys that say which settings a run holds, not how a record is made."""


def check_source(source: Path, manifest: dict[str, Any], out: Path) -> dict[str, Any]:
    """The manifest of ``source``, checked against a new run's (before its model is loaded).

    Args:
        source: a finished or running run directory (``manifest.json``, ``records.jsonl``).
        manifest: the new run's manifest, without the loaded model's facts.
        out: the new run's directory.

    Returns:
        The source's manifest, for ``check_model_facts``.

    Raises:
        UsageError: ``source`` is ``out``, holds no manifest (or one that is not JSON), or was made
            with other options (the message names each key with both values).
    """
    if source.resolve() == out.resolve():
        raise UsageError(f"{source} is the output directory itself")
    path = source / "manifest.json"
    if not path.is_file():
        raise UsageError(f"{source} holds no run (no manifest.json)")
    theirs = {**MANIFEST_DEFAULTS, **read_manifest(path)}
    ours = {**MANIFEST_DEFAULTS, **manifest}
    differ = sorted(k for k in ours.keys() - RUN_SPECIFIC if theirs.get(k) != ours[k])
    if differ:
        raise UsageError(f"{source} was made with other options: "
                         + "; ".join(f"{k} {theirs.get(k)!r} there, {ours[k]!r} here" for k in differ))
    return theirs


def reused_records(source: Path, wanted: Collection[tuple[str, str]]) -> list[dict[str, Any]]:
    """Copies of the records of ``source`` whose ``(doc_id, setting)`` is in ``wanted``, each
    with ``reused_from`` (kept when the record was itself reused). A line the source's driver
    is still writing is left out.

    Raises:
        UsageError: a line of the source's records that is not a JSON object.
    """
    name = source.resolve().name
    wanted = set(wanted)
    return [{**r, "reused_from": r.get("reused_from") or name} for r in read_jsonl(source / "records.jsonl")
            if (r["doc_id"], r["setting"]) in wanted]


def check_model_facts(source: Path, theirs: dict[str, Any], described: dict[str, Any]) -> None:
    """Refuse records made with another model setup than the one loaded here.

    Args:
        source: the source run (for the message).
        theirs: its manifest (``check_source``).
        described: this run's loaded model's facts (``at_probe.models.loading.model_description``).

    Raises:
        UsageError: a fact differs (the message names each with both values).
    """
    differ = sorted(k for k in described if theirs.get(k) != described[k])
    if differ:
        raise UsageError(f"{source} was made with another model setup: "
                         + "; ".join(f"{k} {theirs.get(k)!r} there, {described[k]!r} here" for k in differ))
