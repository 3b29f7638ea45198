"""XSum data: the paper's release format, the held-out split, prompts.

The release accompanying arXiv 2307.13365 is a JSON list of records with at least
``document``, ``summary`` and ``id`` (see ``../shared/data/xsum-at-release/README.md``).
Files may be gzipped (``.json.gz``) or plain JSON.

Example:
    >>> from at_probe.xsum import load_records, is_heldout
    >>> recs = load_records("../shared/data/xsum-at-release/token_800_evaluation.json.gz")
    >>> held = [r for r in recs if is_heldout(r["id"])]
    >>> fixed = load_records(path, fix_text=True)   # mojibake repaired (ftfy); fixed.repaired: ids
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from at_probe.runs.choices import check_choice

if TYPE_CHECKING:
    pass

BUCKETS: tuple[str, ...] = ("800", "1200", "1600", "1900")
"""The release's length buckets (approximate LLaMA token counts)."""


def is_heldout(doc_id: str | int) -> bool:
    """Whether an XSum document is held out from the tiny model's training.

    The rule is ``int(id) % 4 == 0``: about a quarter of the release, used for every
    evaluation of the embedded tiny model and never seen in its training.
    """
    return int(doc_id) % 4 == 0


def is_development(doc_id: str | int) -> bool:
    """Whether a document may be used to choose settings (``int(id) % 4 != 0``, never the test)."""
    return not is_heldout(doc_id)


TEXT_FIELDS: tuple[str, ...] = ("document", "summary")
"""The fields of a release record that the text repair (``fix_text``) rewrites."""


class ReleaseRecords(list[dict[str, Any]]):
    """The records of a release file (a list of dicts) and ``repaired``: the ids of the records
    whose text ``load_records(..., fix_text=True)`` changed (empty without the repair)."""

    repaired: tuple[str, ...] = ()


def repair_text(text: str) -> str:
    """``text`` with its mojibake repaired by ftfy's encoding fixes alone (``ftfy.fix_encoding``):
    UTF-8 that was read as Windows-1252 or Latin-1, once or more, becomes the intended characters
    (``Â£`` -> ``£``, ``â€¦`` -> ``…``, ``Ã©`` -> ``é``). Quotes, character widths, line breaks
    and HTML entities stay as they are; text without mojibake is returned unchanged."""
    import ftfy

    return ftfy.fix_encoding(text)


def text_repair_manifest(fix_text: bool) -> dict[str, Any]:
    """The manifest entries of a run's text repair: ``fix_text``, and ftfy's version when on
    (another version may repair differently, so a resumed run must use the same)."""
    if not fix_text:
        return {"fix_text": False}
    from importlib.metadata import version

    return {"fix_text": True, "ftfy_version": version("ftfy")}


def repair_note(records: ReleaseRecords, used: Sequence[dict[str, Any]]) -> str:
    """One line for a command's output: how many of the documents it ``used`` the repair changed."""
    ids = {str(d["id"]) for d in used}
    return (f"--fix-text: repaired the text of {len(ids & set(records.repaired))} of the {len(ids)} "
            f"documents used ({len(records.repaired)} of the {len(records)} records in the file)")


def load_records(path: str | Path, *, fix_text: bool = False) -> ReleaseRecords:
    """Read a release file (``.json`` or ``.json.gz``) into a list of records.

    The release as published has mojibake (double-encoded UTF-8) in 28-38 of the 200 records of
    each bucket. ``fix_text=True`` repairs the ``TEXT_FIELDS`` of every record (``repair_text``)
    and lists the records it changed in ``repaired``; off by default, so that runs made without
    it stay reproducible.

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
    records = ReleaseRecords(records)
    if fix_text:
        repaired = []
        for record in records:
            fixed = {k: repair_text(record[k]) for k in TEXT_FIELDS if isinstance(record.get(k), str)}
            if any(record[k] != v for k, v in fixed.items()):
                record.update(fixed)
                repaired.append(str(record["id"]))
        records.repaired = tuple(repaired)
    return records


def bucket_file(data_dir: str | Path, bucket: str) -> Path:
    """Path of a bucket's release file, ``token_<B>_evaluation.json.gz``, in ``data_dir``.

    Raises:
        UnknownChoiceError: a bucket not in ``BUCKETS``.
    """
    check_choice("XSum bucket", str(bucket), BUCKETS)
    return Path(data_dir) / f"token_{bucket}_evaluation.json.gz"


def release_files(data_dir: str | Path) -> dict[str, Path]:
    """Map each bucket (``"800"`` ...) to its release file in ``data_dir``; all must exist."""
    files = {b: bucket_file(data_dir, b) for b in BUCKETS}
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


# ---------------------------------------------------------------------------------------------
# Settings: "baseline", "paper:alpha=1,beta=0.5,k=2", "sra:threshold_len=200,...", "placebo:..."
# ---------------------------------------------------------------------------------------------
