"""Run files: a kill leaves at most a partial last line, which only the file's owner cuts off."""

from __future__ import annotations

import json

import pytest

from at_probe.runfiles import append_jsonl, ensure_manifest, read_jsonl


def test_partial_last_line_is_left_out_and_only_cut_by_the_owner(tmp_path):
    path = tmp_path / "records.jsonl"
    with open(path, "a", encoding="utf-8") as fh:
        append_jsonl(fh, [{"a": 1}, {"a": 2}])
    path.write_text(path.read_text() + '{"a": 3')  # a write cut short
    before = path.read_bytes()
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    assert path.read_bytes() == before, "a reader that does not own the file must not change it"
    assert read_jsonl(path, repair=True) == [{"a": 1}, {"a": 2}]
    assert path.read_text() == '{"a": 1}\n{"a": 2}\n'


def test_a_corrupt_complete_line_is_an_error_not_a_truncation(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text('{"a": 1}\n{"a": 2\n{"a": 3}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_jsonl(path, repair=True)
    assert path.read_text().count("\n") == 3, "nothing was deleted"


def test_manifest_is_written_once_and_guards_the_run(tmp_path):
    run = tmp_path / "run"
    ensure_manifest(run, {"model": "tiny", "limit": 4})
    ensure_manifest(run, {"model": "tiny", "limit": 4})
    assert json.loads((run / "manifest.json").read_text()) == {"model": "tiny", "limit": 4}
    with pytest.raises(ValueError, match="limit"):
        ensure_manifest(run, {"model": "tiny", "limit": 8})
