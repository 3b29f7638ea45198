"""XSum data: the paper's release format, the held-out split, prompts.

The release accompanying arXiv 2307.13365 is a JSON list of records with at least
``document``, ``summary`` and ``id`` (see ``../shared/data/xsum-at-release/README.md``).
Files may be gzipped (``.json.gz``) or plain JSON.

Example:
    >>> from at_probe.xsum import load_records, is_heldout
    >>> recs = load_records("../shared/data/xsum-at-release/token_800_evaluation.json.gz")
    >>> held = [r for r in recs if is_heldout(r["id"])]
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

PROMPT_SUFFIX = " Please summarize context above:"
"""Appended to the document to form the paper's summarisation prompt."""

BUCKETS: tuple[str, ...] = ("800", "1200", "1600", "1900")
"""The release's length buckets (approximate LLaMA token counts)."""


def is_heldout(doc_id: str | int) -> bool:
    """Whether an XSum document is held out from the tiny model's training.

    The rule is ``int(id) % 4 == 0``: about a quarter of the release, used for every
    evaluation of the embedded tiny model and never seen in its training.
    """
    return int(doc_id) % 4 == 0


def load_records(path: str | Path) -> list[dict[str, Any]]:
    """Read a release file (``.json`` or ``.json.gz``) into a list of records.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a JSON list of records with ``document`` and ``id``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such XSum file: {path}")
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            records = json.load(fh)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a readable JSON file: {err}") from err
    if not isinstance(records, list) or not all(
        isinstance(r, dict) and "document" in r and "id" in r for r in records
    ):
        raise ValueError(f"{path}: expected a JSON list of records with 'document' and 'id'")
    return records


def release_files(data_dir: str | Path) -> dict[str, Path]:
    """Map each bucket (``"800"`` ...) to its ``token_<B>_evaluation.json.gz`` in ``data_dir``."""
    data_dir = Path(data_dir)
    files = {b: data_dir / f"token_{b}_evaluation.json.gz" for b in BUCKETS}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"missing release files: {', '.join(missing)}")
    return files


def load_all_documents(data_dir: str | Path) -> list[dict[str, Any]]:
    """All records of the four evaluation buckets, each tagged with its ``bucket``."""
    out = []
    for bucket, path in release_files(data_dir).items():
        for rec in load_records(path):
            out.append({**rec, "bucket": bucket})
    return out


def make_prompt(document: str) -> str:
    """The paper's summarisation prompt for one document."""
    return document + PROMPT_SUFFIX
