"""Run directories of the analyses: one driver each, the manifest checked before anything is
repaired or written, every setting checked against the model before the directory exists."""

from __future__ import annotations

import json
import os

import pytest

from at_probe.runs.runfiles import owned_run
from tests.analyses.conftest import load_script
from tests.conftest import XSUM_DIR, require_shared

xsum_eval = load_script("xsum_eval")


def _data() -> str:
    return str(require_shared(XSUM_DIR))


def _release() -> str:
    return str(require_shared(XSUM_DIR / "token_800_evaluation.json.gz"))


def _eval_args(out, *extra) -> list[str]:
    return ["--model", "tiny", "--data", _data(), "--bucket", "800", "--limit", "4", "--batch-size", "1",
            "--max-new-tokens", "6", "--device", "cpu", "--settings", "baseline", "--out", str(out), *extra]


def _interrupted_run(out) -> bytes:
    """A run directory whose driver is mid-write: manifest, two records and a partial third line."""
    out.mkdir(parents=True)
    (out / "manifest.json").write_text(json.dumps({"model": "tiny", "bucket": "800", "split": "heldout",
                                                   "limit": 4, "settings": ["baseline"], "max_new_tokens": 6,
                                                   "batch_size": 1}))
    lines = [json.dumps({"doc_id": d, "setting": "baseline", "summary_nll": 1.0}) + "\n" for d in ("0", "4")]
    (out / "records.jsonl").write_text("".join(lines) + '{"doc_id": "8", "setting": "base')
    return (out / "records.jsonl").read_bytes()


def test_a_second_driver_exits_2_naming_the_first_and_changes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    before = _interrupted_run(out)
    with owned_run(out):  # the first driver, alive and writing its third line
        assert xsum_eval.main(_eval_args(out)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("xsum_eval.py: error:") and "\n" not in err
    assert "in use by another process" in err and f"pid {os.getpid()} on " in err
    assert (out / "records.jsonl").read_bytes() == before, "the refused driver neither repaired nor appended"


def test_a_refused_configuration_does_not_cut_a_partial_line(tmp_path, capsys):
    """Another configuration is refused before records.jsonl is opened: the partial last line of
    a driver that may still be writing stays as it is."""
    out = tmp_path / "run"
    before = _interrupted_run(out)
    args = _eval_args(out)
    args[args.index("--max-new-tokens") + 1] = "7"
    assert xsum_eval.main(args) == 2
    assert "different configuration (max_new_tokens)" in capsys.readouterr().err
    assert (out / "records.jsonl").read_bytes() == before


def test_a_setting_that_does_not_fit_the_model_fails_before_anything_is_written(tmp_path, capsys):
    """layers 5-9 on the tiny model's 8 layers: exit 2 at once, naming the setting; no directory,
    so the corrected run is not refused by a manifest that names the bad setting."""
    out = tmp_path / "run"
    args = _eval_args(out)
    args[args.index("--settings") + 1] = "baseline;temperature:tau=0.8,layers=5-9"
    assert xsum_eval.main(args) == 2
    assert not out.exists()
    err = capsys.readouterr().err.strip()
    assert err.startswith("xsum_eval.py: error:") and "\n" not in err
    assert "temperature:layers=5-9,tau=0.8" in err and "8 layers" in err


@pytest.mark.parametrize("script, args", [
    ("xsum_select", ["--model", "tiny", "--bucket", "800", "--docs", "1", "--max-new-tokens", "4", "--device",
                     "cpu", "--data", "{data}"]),
    ("alternatives_select", ["--model", "tiny", "--bucket", "800", "--docs", "1", "--profile-docs", "1",
                             "--max-new-tokens", "4", "--device", "cpu", "--data", "{data}"]),
    ("flow", ["--model", "tiny", "--xsum", "{release}", "--docs", "1", "--device", "cpu"]),
    ("attribution_agreement", ["--model", "tiny", "--xsum", "{release}", "--docs", "1", "--device", "cpu"]),
])
def test_every_analysis_with_a_run_directory_has_one_driver(script, args, tmp_path, capsys):
    out = tmp_path / "run"
    args = [a.format(data=_data(), release=_release()) for a in args] + ["--out", str(out)]
    with owned_run(out):
        assert load_script(script).main(args) == 2
        assert sorted(p.name for p in out.iterdir()) == [".run.holder.json", ".run.lock"], "nothing written"
    line = capsys.readouterr().err.strip().splitlines()[-1]  # after a model-loading progress bar
    assert line.startswith(f"{script}.py: error:") and f"pid {os.getpid()} on " in line


_RUN_STEPS = [  # (script, the first call of its run block, arguments that pass its input checks)
    ("xsum_eval", "xsum_eval.check_manifest", ["--model", "tiny", "--data", "{data}", "--bucket", "800",
                                               "--limit", "1", "--max-new-tokens", "4", "--device", "cpu"]),
    ("xsum_select", "xsum_select.check_manifest", ["--model", "tiny", "--bucket", "800", "--docs", "1",
                                                   "--max-new-tokens", "4", "--device", "cpu", "--data", "{data}"]),
    ("alternatives_select", "alternatives_select.ensure_manifest", [
        "--model", "tiny", "--bucket", "800", "--docs", "1", "--profile-docs", "1", "--max-new-tokens", "4",
        "--device", "cpu", "--data", "{data}"]),
    ("flow", "flow_corpus.check_manifest", ["--model", "tiny", "--xsum", "{release}", "--docs", "1",
                                            "--device", "cpu"]),
    ("attribution_agreement", "attribution_agreement.ensure_manifest", ["--model", "tiny", "--xsum", "{release}",
                                                                        "--docs", "1", "--device", "cpu"]),
    ("longctx", "longctx.check_manifest", ["--model", "tiny", "--data", "{data}", "--tasks", "passkey",
                                           "--lengths", "512", "--prompts", "1", "--settings", "baseline"]),
]


@pytest.mark.parametrize("bug", [ValueError, KeyError, TypeError])
@pytest.mark.parametrize("script, step, args", _RUN_STEPS, ids=[s[0] for s in _RUN_STEPS])
def test_only_bad_input_is_exit_2_once_a_run_starts(script, step, args, bug, tmp_path, monkeypatch, capsys):
    """Inside a run, the data's fault (a ``UsageError``: a corrupt record, another run's manifest,
    a reference that does not fit) is one line and exit 2; any other error is a bug and keeps its
    type and traceback, not passed off as bad input."""
    from at_probe.runs.errors import UsageError

    module, name = step.split(".")
    args = [a.format(data=_data(), release=_release()) for a in args] + ["--out", str(tmp_path / "run")]

    def fail(error):
        def raising(*_args, **_kwargs):
            raise error
        monkeypatch.setattr(f"at_probe.cli.{module}.{name}", raising)

    fail(bug("a bug in the run"))
    with pytest.raises(bug, match="a bug in the run"):
        load_script(script).main(args)
    fail(UsageError("the data's fault"))
    assert load_script(script).main(args) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"{script}.py: error: the data's fault"


_UNFIT = [  # (script, arguments, the flag named): prompts the run could not build or split
    ("flow", ["--xsum", "{release}", "--docs", "2", "--regions", "3000"], "--regions"),
    ("flow", ["--xsum", "{release}", "--docs", "2", "--max-tokens", "5"], "--max-tokens"),
    ("attribution_agreement", ["--xsum", "{release}", "--docs", "2", "--regions", "3000"], "--regions"),
    ("alternatives_select", ["--data", "{data}", "--bucket", "800", "--docs", "1", "--profile-docs", "1",
                             "--methods", "calibration", "--regions", "3000"], "--regions"),
    ("xsum_eval", ["--data", "{data}", "--bucket", "800", "--limit", "1", "--max-new-tokens", "4096"],
     "--max-new-tokens"),
    ("xsum_select", ["--data", "{data}", "--bucket", "800", "--docs", "1", "--max-new-tokens", "4096"],
     "--max-new-tokens"),
    ("alternatives_select", ["--data", "{data}", "--bucket", "800", "--docs", "1", "--profile-docs", "1",
                             "--methods", "temperature", "--max-new-tokens", "4096"], "--max-new-tokens"),
]


@pytest.mark.parametrize("script, args, flag", _UNFIT, ids=[f"{s}{f}" for s, _, f in _UNFIT])
def test_prompts_the_run_cannot_build_are_refused_before_the_directory_is_written(script, args, flag, tmp_path,
                                                                                   capsys):
    """A flag that leaves a prompt no room for its document (the tiny model's context is 4,096
    tokens), or a document too short for ``--regions``: exit 2 naming the flag and the document,
    with nothing written, so the corrected command may use the same ``--out``."""
    out = tmp_path / "run"
    args = ["--model", "tiny", "--device", "cpu", *[a.format(data=_data(), release=_release()) for a in args],
            "--out", str(out)]
    assert load_script(script).main(args) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"{script}.py: error: argument {flag}: document ")
    assert ("cannot be split into 3000 regions" if flag == "--regions" else "no room for a document") in line
    assert not out.exists()


def test_a_corrupt_records_line_is_exit_2_naming_the_file(tmp_path, capsys):
    """Found once the run has the directory: the input's fault, in one line."""
    out = tmp_path / "run"
    assert xsum_eval.main(_eval_args(out, "--limit", "1")) == 0
    with open(out / "records.jsonl", "a") as fh:
        fh.write('{"doc_id": "0", "setting"\n')
    assert xsum_eval.main(_eval_args(out, "--limit", "1")) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("xsum_eval.py: error: ") and "records.jsonl: line 2 is not JSON" in line


def test_report_only_reports_a_corrupt_run_in_one_line_and_a_bug_with_its_traceback(tmp_path, monkeypatch,
                                                                                       capsys):
    from at_probe.cli import flow_corpus

    out = tmp_path / "run"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"conditions": {"baseline": "None"}}))
    (out / "docs.jsonl").write_text(json.dumps({"doc_id": "0", "series": []}) + "\n")
    args = ["--report-only", "--out", str(out)]

    def broken(*_args, **_kwargs):
        raise ValueError("a bug in the report")

    monkeypatch.setattr(flow_corpus, "report_corpus", broken)
    with pytest.raises(ValueError, match="a bug in the report"):
        load_script("flow").main(args)
    for name, text in (("docs.jsonl", "[1]\n"), ("manifest.json", "{}")):
        (out / name).write_text(text)
        assert load_script("flow").main(args) == 2
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert line.startswith("flow.py: error: argument --out: ")
