"""Run directories that survive a kill: JSONL records appended durably, read back safely.

A run appends one JSON object per line and fsyncs after each batch, so a record is either
complete on disk or absent. A process killed mid-write can leave a partial last line;
``read_jsonl`` drops it (and cuts it off the file) so a resumed run appends cleanly after the
last complete record.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Complete records of a JSONL file ([] if absent); a partial last line is removed from disk."""
    if not path.is_file():
        return []
    raw = path.read_bytes()
    records, good = [], 0
    for line in raw[: raw.rfind(b"\n") + 1].splitlines(keepends=True):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
        good += len(line)
    if good != len(raw):
        with open(path, "r+b") as fh:
            fh.truncate(good)
    return records


def append_jsonl(fh: IO[str], records: Iterable[dict[str, Any]]) -> None:
    """Append records to an open text file, one line each, then flush and fsync."""
    fh.write("".join(json.dumps(r) + "\n" for r in records))
    fh.flush()
    os.fsync(fh.fileno())


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file (streamed)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
