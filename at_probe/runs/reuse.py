"""Records one run may take from another: the same (document, setting) computed under the same
configuration need not be computed twice.

A run that adds controls to an earlier one (say, more placebo draws beside the settings a test
run already holds) plans settings the earlier run has: the same model, data, generation
options and batches give the same records. ``reusable_records`` checks that the source run's
manifest agrees with the new run's on every key that determines a record (everything but the
keys that only say which settings and documents a run holds, ``RUN_SPECIFIC``) and returns the
records wanted, each marked ``reused_from`` (the source directory's name), with the facts the
source recorded once its model was loaded (prompt style, device, dtype, versions). The new run
writes its manifest with those facts before it takes the records, so a model loaded later with
other facts (another torch, another device) is refused by ``ensure_manifest`` rather than
mixed with them.

Example:
    >>> with owned_run(out):
    ...     check_manifest(out, config)
    ...     sink = RecordSink(out / "records.jsonl")
    ...     facts, records = reusable_records(test_run, config, wanted - sink.done)
    ...     ensure_manifest(out, {**config, **facts})
    ...     sink.adopt(records)
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

from at_probe.runs.runfiles import MANIFEST_DEFAULTS, read_jsonl

RUN_SPECIFIC = frozenset({"settings", "roles", "selection_sha256", "roles_subset", "placebo_draws", "limit"})
"""Manifest keys that say which settings and documents a run holds, not how a record is made."""


def reusable_records(source: Path, manifest: dict[str, Any], wanted: Collection[tuple[str, str]]
                     ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The records of ``source`` whose ``(doc_id, setting)`` is in ``wanted``, and the facts of
    its loaded model, for a run whose manifest (before its model is loaded) is ``manifest``.

    Args:
        source: a run directory (``manifest.json``, ``records.jsonl``); it may still be running
            (a line being written is left out).
        manifest: the new run's manifest, without the loaded model's facts.
        wanted: ``(doc_id, setting)`` keys the new run still needs.

    Returns:
        (facts, records): ``facts`` are the source manifest's keys the new one lacks (outside
        ``RUN_SPECIFIC``); each record is a copy with ``reused_from`` set to ``source.name``.

    Raises:
        ValueError: ``source`` has no manifest, or its manifest differs on a key that determines
            a record (the message names the keys and both values).
    """
    path = source / "manifest.json"
    if not path.is_file():
        raise ValueError(f"{source} holds no run (no manifest.json)")
    theirs = {**MANIFEST_DEFAULTS, **json.loads(path.read_text())}
    ours = {**MANIFEST_DEFAULTS, **manifest}
    differ = sorted(k for k in ours.keys() - RUN_SPECIFIC if theirs.get(k) != ours[k])
    if differ:
        raise ValueError(f"{source} was made with other options: "
                         + "; ".join(f"{k} {theirs.get(k)!r} there, {ours[k]!r} here" for k in differ))
    facts = {k: v for k, v in theirs.items() if k not in ours and k not in RUN_SPECIFIC}
    wanted = set(wanted)
    records = [{**r, "reused_from": source.name} for r in read_jsonl(source / "records.jsonl")
               if (r["doc_id"], r["setting"]) in wanted]
    return facts, records
