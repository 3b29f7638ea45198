"""The XSum helpers on unusual input (issue #20, items 6 and 7): empty and mismatched batches,
empty rows and references, and the release's mojibake repaired on request only."""

from __future__ import annotations

import gzip
import json
from types import SimpleNamespace

import pytest

from at_probe import xsum
from at_probe.runs.errors import UsageError
from tests.conftest import XSUM_DIR, require_shared


@pytest.fixture(scope="module")
def stub_model():
    """What the batch helpers read before any forward pass: the tiny model's tokenizer and config
    (no weights)."""
    from transformers import AutoTokenizer

    from at_probe import TINY_MODEL_DIR

    return SimpleNamespace(tokenizer=AutoTokenizer.from_pretrained(TINY_MODEL_DIR),
                           cfg=SimpleNamespace(device="cpu", n_ctx=512))


def test_empty_batches_give_empty_lists(stub_model):
    """Both raised ``max() arg is an empty sequence``."""
    assert xsum.summarise(stub_model, [], None) == []
    assert xsum.reference_nll(stub_model, [], [], None) == []
    ids, mask = xsum.left_pad(stub_model, [])
    assert tuple(ids.shape) == tuple(mask.shape) == (0, 0)


def test_documents_and_references_of_different_lengths_are_refused(stub_model):
    with pytest.raises(ValueError, match="2 documents but 1 references"):
        xsum.reference_nll(stub_model, ["a", "b"], ["x"], None)
    with pytest.raises(ValueError, match="0 documents but 1 references"):
        xsum.reference_nll(stub_model, [], ["x"], None)


def test_a_reference_without_tokens_is_refused(stub_model):
    """Its mean NLL would be NaN (the mean of nothing)."""
    with pytest.raises(UsageError, match=r"references \[1\] have no tokens"):
        xsum.reference_nll(stub_model, ["A town.", "A city."], ["A town", " \n "], None)


def test_a_reference_longer_than_the_room_after_its_prompt_is_the_datas_fault(stub_model):
    """A ``UsageError``: the run drivers report it in one line (exit 2) and let other errors raise."""
    with pytest.raises(UsageError, match=r"references \[0\] do not fit after their prompts in 512 tokens"):
        xsum.reference_nll(stub_model, ["A town. " * 300], [" word" * 40], None, max_new_tokens=20)
    with pytest.raises(UsageError, match=r"references \['doc-7'\] do not fit"):  # named by the caller
        xsum.reference_nll(stub_model, ["A town. " * 300], [" word" * 40], None, max_new_tokens=20, names=["doc-7"])


def test_left_pad_refuses_an_empty_row_and_pads_on_the_left(stub_model):
    with pytest.raises(ValueError, match=r"rows \[1\] are empty"):
        xsum.left_pad(stub_model, [[5, 6], []])
    pad = stub_model.tokenizer.pad_token_id
    ids, mask = xsum.left_pad(stub_model, [[5, 6, 7], [8]])
    assert ids.tolist() == [[5, 6, 7], [pad, pad, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_a_prompt_limit_of_zero_is_refused_not_taken_for_the_context(stub_model):
    assert xsum.prompt_limit(stub_model, None, 50) == 512 - 50
    with pytest.raises(ValueError, match="max_prompt_tokens must be at least 1"):
        xsum.prompt_limit(stub_model, 0, 50)


# ---------------------------------------------------------------------------------------------
# --fix-text (item 7)
# ---------------------------------------------------------------------------------------------

MOJIBAKE = [
    {"id": "4", "document": "It cost Â£5m â€¦ said FÃ©idhlim.", "summary": "A Â£5m deal.",
     "decode_or": "Â£ stays in the paper's outputs"},
    {"id": "8", "document": "“Curly” quotes, ﬁ ligatures and &amp; stay.", "summary": "Nothing to repair."},
    {"id": "12", "document": "Plain text.", "summary": "The cafÃ© reopened."},
]


@pytest.fixture
def release(tmp_path):
    path = tmp_path / "token_800_evaluation.json.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        json.dump(MOJIBAKE, fh)
    return path


def test_the_text_is_repaired_only_when_asked(release):
    plain = xsum.load_records(release)
    assert plain == MOJIBAKE and plain.repaired == ()
    fixed = xsum.load_records(release, fix_text=True)
    assert fixed.repaired == ("4", "12")
    assert fixed[0]["document"] == "It cost £5m … said Féidhlim." and fixed[0]["summary"] == "A £5m deal."
    assert fixed[0]["decode_or"] == MOJIBAKE[0]["decode_or"], "only the document and the reference"
    assert fixed[1] == MOJIBAKE[1], "quotes, ligatures and entities are not mojibake"
    assert fixed[2]["summary"] == "The café reopened."
    assert xsum.repair_note(fixed, fixed[:2]) == ("--fix-text: repaired the text of 1 of the 2 documents used "
                                                  "(2 of the 3 records in the file)")


def test_the_manifest_records_the_repair_and_ftfys_version():
    from importlib.metadata import version

    assert xsum.text_repair_manifest(False) == {"fix_text": False}
    assert xsum.text_repair_manifest(True) == {"fix_text": True, "ftfy_version": version("ftfy")}


def test_the_repair_counts_of_the_release():
    """28-38 of the 200 records of each bucket hold double-encoded UTF-8 (``Â£`` for ``£``)."""
    counts = {}
    for bucket in xsum.BUCKETS:
        path = require_shared(xsum.bucket_file(XSUM_DIR, bucket))
        fixed = xsum.load_records(path, fix_text=True)
        assert not any("Â£" in r["document"] or "â€" in r["document"] for r in fixed)
        counts[bucket] = len(fixed.repaired)
    assert counts == {"800": 38, "1200": 33, "1600": 33, "1900": 28}
