"""Run directories that survive a kill and have one owner: JSONL records appended durably, read
back safely, JSON files replaced whole.

A run appends one JSON object per line and fsyncs after each batch, so a record is either
complete on disk or absent. A process killed mid-write can leave a partial last line;
``read_jsonl`` leaves it out and, for the run that owns the file (``repair=True``), cuts it off
so a resumed run appends cleanly after the last complete record.

One driver at a time: ``owned_run`` holds an exclusive lock on the directory (``filelock``, an
``flock`` the kernel drops when the process dies, however it dies) for the driver's whole life,
and a second driver is refused with a message naming the holder. Only an owner may repair or
append: a refused driver changes nothing. The order inside a driver is: take the directory,
check the manifest (``check_manifest``), then open and repair the records, then run.
JSON files (``manifest.json``, ``selection.json``, reports) are written with
``write_json_atomic``: a reader or a kill sees the old file or the new one, never half of one.

Example:
    >>> with owned_run(out):
    ...     check_manifest(out, config)                 # refuses another configuration first
    ...     records = read_jsonl(out / "records.jsonl", repair=True)
    ...     write_json_atomic(out / "selection.json", {"chosen": "baseline"})
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import shlex
import socket
import sys
import tempfile
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from filelock import FileLock, Timeout

from at_probe.runs.errors import UsageError


class RunDirectoryBusy(OSError):
    """Another live process holds the run directory (the message names it: pid, host, command
    line, start time)."""


_OWNED: dict[tuple[Path, str], int] = {}
"""Locks this process holds through ``owned_run``: (resolved directory, role) -> nesting depth."""


@contextlib.contextmanager
def owned_run(run: Path, *, role: str = "run") -> Iterator[Path]:
    """Hold ``run`` (created if absent) exclusively for the block: one driver per directory.

    The lock is ``run/.{role}.lock``; once it is held, ``run/.{role}.holder.json`` records who
    holds it (pid, host, command line, start time, UTC) for the message another process gets.
    The kernel releases the lock when the process ends, even by ``kill -9``, so a killed
    driver never leaves its directory locked (a stale holder file is overwritten by the next
    owner and is only read while the lock is held). Another ``role`` is a separate lock, for a
    file added to a directory whose run has its own driver (``"semantic"``: the similarity
    cache a report adds beside a test run's records), so a live run can still be reported on.

    Yields:
        ``run``.

    Raises:
        RunDirectoryBusy: another process holds the lock (raised at once, nothing changed).
    """
    run.mkdir(parents=True, exist_ok=True)
    lock_path, holder_path = run / f".{role}.lock", run / f".{role}.holder.json"
    lock = FileLock(lock_path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RunDirectoryBusy(f"{run} is in use by another process ({_holder(holder_path)}); wait for it "
                               "to finish or use another directory") from None
    key = (run.resolve(), role)
    try:
        write_json_atomic(holder_path, {
            "pid": os.getpid(), "host": socket.gethostname(), "command": sys.orig_argv,
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
        _OWNED[key] = _OWNED.get(key, 0) + 1
        yield run
    finally:
        _OWNED[key] = _OWNED.get(key, 1) - 1
        if not _OWNED[key]:
            del _OWNED[key]
        holder_path.unlink(missing_ok=True)  # before the release: the next owner writes its own
        lock.release()


def owns(run: Path, role: str = "run") -> bool:
    """Whether this process holds ``run``'s lock of ``role`` through ``owned_run`` (another
    role's lock does not make it the owner of the run's own files)."""
    return (run.resolve(), role) in _OWNED


def _holder(path: Path) -> str:
    """The holder file's facts in words (a holder that has just taken the lock may not have
    written it yet)."""
    try:
        h = json.loads(path.read_text())
        command = shlex.join(h["command"]).replace("\n", "\\n")  # one line, whatever the arguments
        return f"pid {h['pid']} on {h['host']} since {h['started']}: {command}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder not recorded yet"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once, at import: os.umask can only be read by setting it


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) in one step: written to a temporary file in the
    same directory, fsynced, then renamed over ``path``, so a reader or a kill at any moment
    sees the old content or the new, never a part. The directory must exist."""
    fd, partial = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 would make results private to their writer
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # the rename itself on disk (not every filesystem allows this)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_json_atomic(path: Path, value: Any, *, indent: int | None = 1, **dumps: Any) -> None:
    """``json.dumps(value)`` written with ``write_text_atomic``; serialised first, so a value
    that cannot be written leaves the old file as it was. ``dumps`` go to ``json.dumps``
    (``default=str``, say)."""
    write_text_atomic(path, json.dumps(value, indent=indent, **dumps))


def read_jsonl(path: Path, *, repair: bool = False, role: str = "run") -> list[dict[str, Any]]:
    """Complete records of a JSONL file ([] if absent).

    A last line without its newline (a write cut short by a kill) is left out; with
    ``repair=True`` (the run that owns the file, about to append) it is also cut off the file.
    Only the owner repairs: another reader may meet a line still being written. The owner is
    the holder of the directory's lock of ``role`` (``"run"``: the driver; a report's own
    cache beside the records has its own role).

    Raises:
        UsageError: a complete line that is not a JSON object (the file is corrupt, not cut short).
        RuntimeError: ``repair=True`` outside ``owned_run(path.parent, role=role)``.
    """
    if repair and not owns(path.parent, role):
        raise RuntimeError(f"{path}: only the owner of {path.parent} may repair it; open it inside "
                           "at_probe.runs.runfiles.owned_run (and check the manifest first)")
    if not path.is_file():
        return []
    raw = path.read_bytes()
    complete = raw[: raw.rfind(b"\n") + 1]
    records = []
    for number, line in enumerate(complete.splitlines(), start=1):
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UsageError(f"{path}: line {number} is not JSON ({err}); the file is corrupt") from None
        if not isinstance(record, dict):
            raise UsageError(f"{path}: line {number} is not a record (a JSON object); the file is corrupt")
        records.append(record)
    if repair and len(complete) != len(raw):
        with open(path, "r+b") as fh:
            fh.truncate(len(complete))
    return records


def append_jsonl(fh: IO[str], records: Iterable[dict[str, Any]]) -> None:
    """Append records to an open text file, one line each, then flush and fsync."""
    fh.write("".join(json.dumps(r) + "\n" for r in records))
    fh.flush()
    os.fsync(fh.fileno())


MANIFEST_DEFAULTS: dict[str, Any] = {"fix_text": False, "rouge_tokenizer": "default", "knockout_estimate": False,
                                     "reply_tokens": 0}
"""Options added to the run manifests after runs were committed, with the value a manifest
without the key implies: ``--fix-text`` (XSum text repair), ``--rouge-tokenizer``,
``longctx.py --knockout-estimate`` and ``--reply-tokens``. A run
resumed with another value is refused; one made before the key existed compares as its default
(a selection made then is still usable with the default options)."""


def check_manifest(run: Path, manifest: dict[str, Any], *, growable: Collection[str] = (),
                   follows_growth: Collection[str] = (), partial: bool = True) -> bool:
    """Check that ``run`` may hold this run; whether ``run/manifest.json`` must be (re)written.

    Compares only, writes nothing: a driver calls it before it repairs or appends anything,
    with what it knows before loading the model (``ensure_manifest`` checks again, with the
    loaded model's facts, and writes). A key of ``MANIFEST_DEFAULTS`` that either manifest
    lacks compares as its default (an option added later: a run made before it ran with the
    default). Other keys the existing manifest does not have (a newer format, or facts not
    known yet) are not compared. A key in ``growable`` may grow (a list gains items, a dict
    gains keys; what was there stays the same): the run gains, say, a setting, the records
    already written stay valid, and the manifest is replaced. A key in
    ``follows_growth`` (the hash of the file the new items came from) may change only along
    with such growth. A run grows only when both manifests have the same keys, so every key
    that guards the records is compared; with ``partial`` (the default: the facts known before
    the model is loaded) keys only the existing manifest has are left to ``ensure_manifest``.

    Returns:
        True when there is no manifest yet or the run grows; False when it is the same run.

    Raises:
        UsageError: the directory holds a run with a different configuration (names the keys), or a
            manifest that is not a JSON object.
    """
    path = run / "manifest.json"
    if not path.is_file():
        return True
    old = {**MANIFEST_DEFAULTS, **read_manifest(path)}
    manifest = {**MANIFEST_DEFAULTS, **manifest}
    # a key the old manifest lacks was added to the format later: nothing to compare it with
    diff = sorted(k for k in manifest if k in old and old[k] != manifest[k])
    grown = {k for k in diff if k in growable and _grows(old[k], manifest[k])}
    refused = [k for k in diff if k not in grown and not (grown and k in follows_growth)]
    if refused:
        raise UsageError(f"{run} holds a run with a different configuration ({', '.join(refused)}); "
                         "use another output directory")
    if not grown:
        return False
    if set(manifest) - set(old) or (set(old) - set(manifest) and not partial):
        keys = ", ".join(sorted(set(old) ^ set(manifest)))
        raise UsageError(f"{run} cannot gain {', '.join(sorted(grown))}: its manifest and this run's "
                         f"differ in keys ({keys}), so not all of the configuration can be compared; "
                         "use another output directory")
    return True


def read_manifest(path: Path) -> dict[str, Any]:
    """A run's ``manifest.json`` (or another JSON object a run keeps, such as a report).

    Raises:
        UsageError: the file is not a JSON object (corrupt, or not what a run writes).
    """
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{path} is not JSON ({err}); the file is corrupt") from None
    if not isinstance(manifest, dict):
        raise UsageError(f"{path} is not a JSON object")
    return manifest


def ensure_manifest(run: Path, manifest: dict[str, Any], *, growable: Collection[str] = (),
                    follows_growth: Collection[str] = ()) -> None:
    """Write ``run/manifest.json`` (atomically), or check that the one there describes the same
    run (``check_manifest``, whose arguments and rules these are).

    Raises:
        UsageError: the directory holds a run with a different configuration (names the keys), or a
            manifest that is not a JSON object.
    """
    if check_manifest(run, manifest, growable=growable, follows_growth=follows_growth, partial=False):
        run.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run / "manifest.json", manifest)


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
