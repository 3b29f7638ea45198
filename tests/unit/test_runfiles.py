"""Run files: a kill leaves at most a partial last line, which only the directory's owner cuts
off; one owner per directory; JSON files replaced whole."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from at_probe.runs import runfiles
from at_probe.runs.errors import UsageError
from at_probe.runs.runfiles import (
    RunDirectoryBusy,
    append_jsonl,
    check_manifest,
    ensure_manifest,
    owned_run,
    read_jsonl,
    write_json_atomic,
)

REPO = Path(__file__).resolve().parents[2]


def test_partial_last_line_is_left_out_and_only_cut_by_the_owner(tmp_path):
    path = tmp_path / "records.jsonl"
    with open(path, "a", encoding="utf-8") as fh:
        append_jsonl(fh, [{"a": 1}, {"a": 2}])
    path.write_text(path.read_text() + '{"a": 3')  # a write cut short
    before = path.read_bytes()
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    assert path.read_bytes() == before, "a reader that does not own the file must not change it"
    with pytest.raises(RuntimeError, match="owner"):
        read_jsonl(path, repair=True)  # repairing needs the directory: another driver may be writing
    assert path.read_bytes() == before
    with owned_run(tmp_path, role="semantic"), pytest.raises(RuntimeError, match="owner"):
        read_jsonl(path, repair=True)  # a report's cache lock does not own the driver's records
    assert path.read_bytes() == before
    with owned_run(tmp_path):
        assert read_jsonl(path, repair=True) == [{"a": 1}, {"a": 2}]
    assert path.read_text() == '{"a": 1}\n{"a": 2}\n'


def test_a_corrupt_complete_line_is_an_error_not_a_truncation(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text('{"a": 1}\n{"a": 2\n{"a": 3}\n')
    with owned_run(tmp_path), pytest.raises(UsageError, match="line 2"):
        read_jsonl(path, repair=True)
    assert path.read_text().count("\n") == 3, "nothing was deleted"


def test_a_second_owner_is_refused_naming_the_holder(tmp_path):
    """A driver holding the directory in another process: refused at once with its pid and
    command line; once that process is killed (-9), the kernel's lock is gone with it."""
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pathlib import Path\n"
         "from at_probe.runs.runfiles import owned_run\nwith owned_run(Path(sys.argv[1])):\n"
         "    print('held', flush=True)\n    time.sleep(120)\n", str(run), "--marker-arg"],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirectoryBusy) as refused:
            with owned_run(run):
                pass
        message = str(refused.value)
        assert f"pid {holder.pid} on " in message and "--marker-arg" in message and "in use" in message
        assert "\n" not in message
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    with owned_run(run):  # a killed holder leaves nothing locked
        with pytest.raises(RunDirectoryBusy, match=f"pid {os.getpid()} "):  # nor may this process enter twice
            with owned_run(run):
                pass
    assert not (run / ".run.holder.json").exists()


def test_json_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    """A write interrupted before it is on disk (a kill, a full disk) leaves the old file as it was
    and no stray temporary file; a value that cannot be serialised changes nothing either."""
    path = tmp_path / "selection.json"
    write_json_atomic(path, {"chosen": "old"})
    assert json.loads(path.read_text()) == {"chosen": "old"}

    def killed(fd):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(runfiles.os, "fsync", killed)
        with pytest.raises(KeyboardInterrupt):
            write_json_atomic(path, {"chosen": "new", "padding": "x" * 100_000})
    assert json.loads(path.read_text()) == {"chosen": "old"}
    with pytest.raises(TypeError):
        write_json_atomic(path, {"chosen": object()})
    assert json.loads(path.read_text()) == {"chosen": "old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["selection.json"]
    write_json_atomic(path, {"chosen": float("nan")}, default=str)
    assert path.read_text() == '{\n "chosen": NaN\n}'


def test_manifest_is_written_once_and_guards_the_run(tmp_path):
    run = tmp_path / "run"
    ensure_manifest(run, {"model": "tiny", "limit": 4})
    ensure_manifest(run, {"model": "tiny", "limit": 4})
    assert json.loads((run / "manifest.json").read_text()) == {"model": "tiny", "limit": 4}
    with pytest.raises(UsageError, match="limit"):
        ensure_manifest(run, {"model": "tiny", "limit": 8})


def test_a_manifest_that_is_not_a_json_object_is_the_inputs_fault(tmp_path):
    """A ``UsageError`` (exit 2 in the commands), not a JSONDecodeError from inside a run."""
    run = tmp_path / "run"
    run.mkdir()
    for text, message in (('{"model": "tiny"', "is not JSON"), ('["tiny"]', "is not a JSON object")):
        (run / "manifest.json").write_text(text)
        with pytest.raises(UsageError, match=message):
            check_manifest(run, {"model": "tiny"})


def test_records_that_are_not_json_objects_are_the_inputs_fault(tmp_path):
    path = tmp_path / "records.jsonl"
    for content, message in ((b'{"a": 1}\n[1]\n', "line 2 is not a record"), (b'{"a": 1}\n\xff\n', "line 2 is not JSON")):
        path.write_bytes(content)
        with pytest.raises(UsageError, match=message):
            read_jsonl(path)


def test_records_without_their_key_are_not_a_runs_records(tmp_path):
    from at_probe.runs.sweep import RecordSink

    (tmp_path / "records.jsonl").write_text('{"setting": "baseline"}\n')
    with owned_run(tmp_path), pytest.raises(UsageError, match="a record without 'doc_id'"):
        RecordSink(tmp_path / "records.jsonl")


def test_a_reused_source_whose_manifest_is_not_json_is_the_inputs_fault(tmp_path):
    from at_probe.runs.reuse import check_source

    (tmp_path / "source").mkdir()
    (tmp_path / "source" / "manifest.json").write_text("{")
    with pytest.raises(UsageError, match="is not JSON"):
        check_source(tmp_path / "source", {"model": "tiny"}, tmp_path / "out")


def test_manifest_may_grow_only_where_allowed(tmp_path):
    run = tmp_path / "run"
    first = {"model": "tiny", "settings": ["a", "b"], "roles": {"x": "a"}, "selection_sha256": "1"}
    ensure_manifest(run, first)
    grown = {**first, "settings": ["a", "c", "b"], "roles": {"x": "a", "y": "c"}, "selection_sha256": "2"}
    kw = {"growable": ("settings", "roles"), "follows_growth": ("selection_sha256",)}
    with pytest.raises(UsageError, match="roles, selection_sha256, settings"):
        ensure_manifest(run, grown)  # growth refused unless allowed
    with pytest.raises(UsageError, match="selection_sha256"):
        ensure_manifest(run, {**first, "selection_sha256": "2"}, **kw)  # a new hash alone is not growth
    with pytest.raises(UsageError, match="settings"):
        ensure_manifest(run, {**grown, "settings": ["a", "c"]}, **kw)  # "b" lost: not growth
    with pytest.raises(UsageError, match="roles"):
        ensure_manifest(run, {**grown, "roles": {"x": "c", "y": "c"}}, **kw)  # role "x" changed
    with pytest.raises(UsageError, match="model"):
        ensure_manifest(run, {**grown, "model": "smollm2"}, **kw)
    with pytest.raises(UsageError, match="differ in keys"):
        ensure_manifest(run, {**grown, "choices_sha256": "9"}, **kw)  # a guard the old run lacks
    with pytest.raises(UsageError, match="differ in keys"):
        ensure_manifest(run, {k: v for k, v in grown.items() if k != "selection_sha256"}, **kw)  # key lost
    with pytest.raises(UsageError, match="settings"):
        ensure_manifest(run, {**grown, "settings": ["a", "b", "a"]}, **kw)  # a repeat is not growth
    assert json.loads((run / "manifest.json").read_text()) == first, "a refused run leaves the manifest alone"
    ensure_manifest(run, grown, **kw)
    assert json.loads((run / "manifest.json").read_text()) == grown
    ensure_manifest(run, grown, **kw)  # the grown run resumes as itself


def test_an_option_added_later_compares_as_its_default(tmp_path):
    """A committed run's manifest predates ``fix_text`` and ``rouge_tokenizer``: it resumes and
    grows with the defaults, and is refused with any other value, either way round."""
    run = tmp_path / "run"
    committed = {"model": "tiny", "settings": ["a"]}
    ensure_manifest(run, committed)
    kw = {"growable": ("settings",)}
    ensure_manifest(run, {**committed, "fix_text": False, "rouge_tokenizer": "default"}, **kw)  # resumes
    with pytest.raises(ValueError, match="fix_text"):
        ensure_manifest(run, {**committed, "fix_text": True})
    with pytest.raises(ValueError, match="rouge_tokenizer"):
        ensure_manifest(run, {**committed, "rouge_tokenizer": "unicode"})
    grown = {**committed, "settings": ["a", "b"], "fix_text": False, "rouge_tokenizer": "default"}
    ensure_manifest(run, grown, **kw)
    assert json.loads((run / "manifest.json").read_text()) == grown
    repaired = tmp_path / "repaired"
    ensure_manifest(repaired, {**committed, "fix_text": True})
    with pytest.raises(ValueError, match="fix_text"):
        ensure_manifest(repaired, committed)  # a repaired run resumed without the repair


def test_a_manifest_is_checked_before_the_model_is_loaded(tmp_path):
    """The driver's first check has no model facts yet: those keys are left to ensure_manifest,
    every other key is compared, and nothing is written."""
    run = tmp_path / "run"
    ensure_manifest(run, {"model": "tiny", "settings": ["a"], "device": "cpu"})
    before = (run / "manifest.json").read_bytes()
    kw = {"growable": ("settings",)}
    assert check_manifest(run, {"model": "tiny", "settings": ["a"]}) is False
    assert check_manifest(run, {"model": "tiny", "settings": ["a", "b"]}, **kw) is True  # it will grow
    with pytest.raises(ValueError, match="model"):
        check_manifest(run, {"model": "smollm2", "settings": ["a"]})
    with pytest.raises(ValueError, match="differ in keys"):
        check_manifest(run, {"model": "tiny", "settings": ["a", "b"]}, partial=False, **kw)
    assert (run / "manifest.json").read_bytes() == before
    assert check_manifest(tmp_path / "new", {"model": "tiny"}) is True and not (tmp_path / "new").exists()


def test_an_atomic_write_has_the_permissions_of_a_plain_one(tmp_path):
    """A replaced file is as readable as ``write_text`` would leave it (not mkstemp's 0600)."""
    import stat

    from at_probe.runs.runfiles import write_json_atomic

    plain = tmp_path / "plain.json"
    plain.write_text("{}")
    write_json_atomic(tmp_path / "atomic.json", {})
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "atomic.json") == mode(plain)
