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


def test_manifest_may_grow_only_where_allowed(tmp_path):
    run = tmp_path / "run"
    first = {"model": "tiny", "settings": ["a", "b"], "roles": {"x": "a"}, "selection_sha256": "1"}
    ensure_manifest(run, first)
    grown = {**first, "settings": ["a", "c", "b"], "roles": {"x": "a", "y": "c"}, "selection_sha256": "2"}
    kw = {"growable": ("settings", "roles"), "follows_growth": ("selection_sha256",)}
    with pytest.raises(ValueError, match="roles, selection_sha256, settings"):
        ensure_manifest(run, grown)  # growth refused unless allowed
    with pytest.raises(ValueError, match="selection_sha256"):
        ensure_manifest(run, {**first, "selection_sha256": "2"}, **kw)  # a new hash alone is not growth
    with pytest.raises(ValueError, match="settings"):
        ensure_manifest(run, {**grown, "settings": ["a", "c"]}, **kw)  # "b" lost: not growth
    with pytest.raises(ValueError, match="roles"):
        ensure_manifest(run, {**grown, "roles": {"x": "c", "y": "c"}}, **kw)  # role "x" changed
    with pytest.raises(ValueError, match="model"):
        ensure_manifest(run, {**grown, "model": "smollm2"}, **kw)
    with pytest.raises(ValueError, match="differ in keys"):
        ensure_manifest(run, {**grown, "choices_sha256": "9"}, **kw)  # a guard the old run lacks
    with pytest.raises(ValueError, match="differ in keys"):
        ensure_manifest(run, {k: v for k, v in grown.items() if k != "selection_sha256"}, **kw)  # key lost
    with pytest.raises(ValueError, match="settings"):
        ensure_manifest(run, {**grown, "settings": ["a", "b", "a"]}, **kw)  # a repeat is not growth
    assert json.loads((run / "manifest.json").read_text()) == first, "a refused run leaves the manifest alone"
    ensure_manifest(run, grown, **kw)
    assert json.loads((run / "manifest.json").read_text()) == grown
    ensure_manifest(run, grown, **kw)  # the grown run resumes as itself
