"""``--fix-text`` and ``--rouge-tokenizer`` (issue #20, items 6 and 7): explicit, printed,
recorded in the manifest, and a committed run without them resumes as it was made."""

from __future__ import annotations

import json

import pytest

from tests.analyses.conftest import load_script
from tests.conftest import XSUM_DIR, require_shared

xsum_eval = load_script("xsum_eval")
flow = load_script("flow")


def _args(out, *extra):  # the sixth held-out document of the 800 bucket has mojibake ("Â£")
    return ["--model", "tiny", "--data", str(require_shared(XSUM_DIR)), "--bucket", "800", "--limit", "6",
            "--batch-size", "6", "--max-new-tokens", "4", "--settings", "baseline", "--out", str(out), *extra]


def test_fix_text_and_the_rouge_tokenizer_are_printed_recorded_and_guard_the_run(tmp_path, capsys):
    out = tmp_path / "fixed"
    assert xsum_eval.main(_args(out, "--fix-text", "--rouge-tokenizer", "unicode")) == 0
    assert ("--fix-text: repaired the text of 1 of the 6 documents used (38 of the 200 records in the file)"
            in capsys.readouterr().out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["fix_text"] is True and manifest["rouge_tokenizer"] == "unicode" and manifest["ftfy_version"]
    for changed in (["--rouge-tokenizer", "unicode"], ["--fix-text"]):  # each one dropped in turn
        assert xsum_eval.main(_args(out, *changed)) == 2
        assert "different configuration" in capsys.readouterr().err


def test_a_run_made_before_the_options_resumes_and_refuses_them(tmp_path, capsys):
    out = tmp_path / "committed"
    assert xsum_eval.main(_args(out)) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["fix_text"], manifest["rouge_tokenizer"]) == (False, "default")
    old = {k: v for k, v in manifest.items() if k not in ("fix_text", "rouge_tokenizer")}
    (out / "manifest.json").write_text(json.dumps(old))  # as the committed runs were written
    capsys.readouterr()
    assert xsum_eval.main(_args(out)) == 0
    assert "0 to go" in capsys.readouterr().out
    for option in (["--fix-text"], ["--rouge-tokenizer", "unicode"]):
        assert xsum_eval.main(_args(out, *option)) == 2
        err = capsys.readouterr().err
        assert "different configuration" in err and option[0].removeprefix("--").replace("-", "_") in err


def test_flow_refuses_fix_text_without_an_xsum_file(capsys):
    with pytest.raises(SystemExit) as exit_:
        flow.main(["--fix-text", "--model", "tiny"])
    assert exit_.value.code == 2
    assert "argument --fix-text: repairs the text of an XSum release: add --xsum FILE" in capsys.readouterr().err
