"""Run directories that survive a kill: JSONL records appended durably, read back safely.

A run appends one JSON object per line and fsyncs after each batch, so a record is either
complete on disk or absent. A process killed mid-write can leave a partial last line;
``read_jsonl`` leaves it out and, for the run that owns the file (``repair=True``), cuts it off
so a resumed run appends cleanly after the last complete record.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import IO, Any


def read_jsonl(path: Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """Complete records of a JSONL file ([] if absent).

    A last line without its newline (a write cut short by a kill) is left out; with
    ``repair=True`` (the run that owns the file, about to append) it is also cut off the file.
    Only the owner repairs: another reader may meet a line still being written.

    Raises:
        ValueError: a complete line that is not JSON (the file is corrupt, not cut short).
    """
    if not path.is_file():
        return []
    raw = path.read_bytes()
    complete = raw[: raw.rfind(b"\n") + 1]
    records = []
    for number, line in enumerate(complete.splitlines(), start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: line {number} is not JSON ({err}); the file is corrupt") from None
    if repair and len(complete) != len(raw):
        with open(path, "r+b") as fh:
            fh.truncate(len(complete))
    return records


def append_jsonl(fh: IO[str], records: Iterable[dict[str, Any]]) -> None:
    """Append records to an open text file, one line each, then flush and fsync."""
    fh.write("".join(json.dumps(r) + "\n" for r in records))
    fh.flush()
    os.fsync(fh.fileno())


def ensure_manifest(run: Path, manifest: dict[str, Any], *, growable: Collection[str] = (),
                    follows_growth: Collection[str] = ()) -> None:
    """Write ``run/manifest.json``, or check that the one there describes the same run.

    Keys the existing manifest does not have (a newer format) are not compared. A key in
    ``growable`` may grow (a list gains items, a dict gains keys; what was there stays the
    same): the run gains, say, a setting, the records already written stay valid, and the
    manifest is replaced. A key in ``follows_growth`` (the hash of the file the new items came
    from) may change only along with such growth. A run grows only when both manifests have the
    same keys, so every key that guards the records is compared.

    Raises:
        ValueError: the directory holds a run with a different configuration (names the keys).
    """
    path = run / "manifest.json"
    if path.is_file():
        old = json.loads(path.read_text())
        # a key the old manifest lacks was added to the format later: nothing to compare it with
        diff = sorted(k for k in manifest if k in old and old[k] != manifest[k])
        grown = {k for k in diff if k in growable and _grows(old[k], manifest[k])}
        refused = [k for k in diff if k not in grown and not (grown and k in follows_growth)]
        if refused:
            raise ValueError(f"{run} holds a run with a different configuration ({', '.join(refused)}); "
                             "use another output directory")
        if not grown:
            return
        if set(old) != set(manifest):
            keys = ", ".join(sorted(set(old) ^ set(manifest)))
            raise ValueError(f"{run} cannot gain {', '.join(sorted(grown))}: its manifest and this run's "
                             f"differ in keys ({keys}), so not all of the configuration can be compared; "
                             "use another output directory")
    run.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")  # replaced whole: a kill never leaves half a manifest
    partial.write_text(json.dumps(manifest, indent=1))
    os.replace(partial, path)


def _grows(old: Any, new: Any) -> bool:
    """``new`` holds everything ``old`` does, and more: list items (each once), or dict items."""
    if isinstance(old, list) and isinstance(new, list):
        unique = len(set(map(json.dumps, new))) == len(new)
        return unique and len(new) > len(old) and all(item in new for item in old)
    if isinstance(old, dict) and isinstance(new, dict):
        return len(new) > len(old) and all(k in new and new[k] == v for k, v in old.items())
    return False


def json_sha256(value: Any) -> str:
    """Hex sha256 of a JSON value's canonical text (keys sorted): the same content, the same hash,
    however a file holding it is laid out."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file (streamed)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
