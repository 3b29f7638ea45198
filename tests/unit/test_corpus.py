"""Corpus statistics: per-document rows, means and paired differences with intervals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from at_probe.flow import corpus

from at_probe.flow import ops
from at_probe.flow.probe import FlowResult


def _result(profile: torch.Tensor, labels: list[str]) -> FlowResult:
    n_layers, n_heads, _ = profile.shape
    zeros = torch.zeros(n_layers, n_heads)
    return FlowResult(region_bounds=torch.arange(len(labels) + 1), region_labels=labels,
                      region_mass=torch.zeros(n_layers, n_heads, len(labels), len(labels)),
                      final_token_profile=profile, sink_mass=zeros, entropy=zeros, distance=zeros)


def test_document_rows_headline_is_early_document_mass_in_deep_layers():
    labels = ["sink", "template", "doc 01", "doc 02", "doc 03", "doc 04", "instruction"]
    profile = torch.zeros(4, 2, len(labels))
    profile[:, :, 2] = 0.1   # doc 01 in every layer
    profile[2:, 0, 3] = 0.4  # doc 02, head 0, deep layers only
    profile[:, :, 4] = 0.9   # doc 03: second half, not counted
    rows = corpus.document_rows(_result(profile, labels), doc_id="8", condition="paper")
    head = [r for r in rows if r["measure"] == "early_document_deep:final_token_profile"]
    assert len(head) == 1 and head[0]["value"] == pytest.approx(0.1 + 0.2)
    assert {r["measure"] for r in rows} >= {"final_token_profile", "sink_mass", "entropy", "distance"}
    with pytest.raises(ValueError, match="document regions"):
        corpus.document_rows(_result(profile[..., :2], ["sink", "1-9"]), doc_id="8", condition="paper")


def test_series_give_back_every_row_exactly_and_in_order():
    """A docs.jsonl record's series (pack_rows) unpack to the document's rows (grouped by series,
    each series in its rows' order), the same floats through JSON; an older run's record
    (``rows``) reads as it is."""
    import json

    labels = ["sink", "template", "doc 01", "doc 02", "instruction"]
    profile = torch.rand(5, 3, len(labels), generator=torch.Generator().manual_seed(0))
    rows = [*corpus.document_rows(_result(profile, labels), doc_id="8", condition="baseline"),
            *corpus.document_rows(_result(profile.flip(0), labels), doc_id="8", condition="paper")]
    rows.append({"doc_id": "8", "condition": "paper", "measure": corpus.ATTRIBUTION, "layer": 3, "region": "doc 01",
                 "value": -1 / 3})
    record = {"doc_id": "8", "series": corpus.pack_rows(rows)}
    line = json.dumps(record)
    back = corpus.unpack_record(json.loads(line))
    key = lambda r: (r["condition"], r["measure"], r["region"], r["layer"])  # noqa: E731
    assert sorted(back, key=key) == sorted(rows, key=key) and len(back) == len(rows)
    firsts = list(dict.fromkeys((r["condition"], r["measure"], r["region"]) for r in rows))
    assert list(dict.fromkeys((r["condition"], r["measure"], r["region"]) for r in back)) == firsts
    assert [r for r in back if r["measure"] == "entropy" and r["condition"] == "paper"] == [
        r for r in rows if r["measure"] == "entropy" and r["condition"] == "paper"]
    def two_docs(rs):  # the report reads both orders alike (the attribution row has no baseline: left out)
        return pd.DataFrame([{**r, "doc_id": d} for d in ("8", "9") for r in rs if r["measure"] != corpus.ATTRIBUTION])

    table = {name: corpus.summarise(two_docs(rs), n_boot=50) for name, rs in (("rows", rows), ("series", back))}
    pd.testing.assert_frame_equal(table["rows"], table["series"])
    assert len(line) < len(json.dumps({"doc_id": "8", "rows": rows})) / 2
    assert corpus.unpack_record({"doc_id": "8", "rows": rows[:3]}) == rows[:3]
    with pytest.raises(ValueError):  # layers and values of one series must pair up
        corpus.unpack_record({"doc_id": "8", "series": [["paper", "entropy", "", [0, 1], [0.5]]]})


def test_committed_corpus_runs_are_series_and_no_tracked_file_is_over_20_mib():
    """The committed flow runs' docs.jsonl use series (the rows layout made them 44 MB), and no
    file git tracks is over 20 MiB (what a clone and the CI copy carry)."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout: no tracked files to size")
    paths = [root / p for p in listed.stdout.decode().split("\0") if p]
    assert [p for p in paths if p.is_file() and p.stat().st_size > 20 * 2**20] == []
    runs = [p for p in paths if p.name == "docs.jsonl" and (p.parent / "corpus.json").is_file()]
    assert runs and all('"series"' in p.open().readline() for p in runs)


def _frame(effect: float, n_docs: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for d in range(n_docs):
        base = rng.normal(0.5, 0.2)
        for cond, shift in (("baseline", 0.0), ("paper", effect)):
            rows.append({"doc_id": str(d), "condition": cond, "measure": "sink_mass", "layer": 0, "region": "",
                         "value": base + shift + rng.normal(0, 0.01)})
    return pd.DataFrame(rows)


def test_summarise_pairs_documents_and_finds_a_real_shift_but_not_noise():
    """Paired by document: a 0.02 shift under document-level spread of 0.2 is found; a null
    effect excludes 0 in about 5% of seeds, not more."""
    found = corpus.summarise(_frame(0.02, 30, 0))
    diff = found[found.kind == "difference"].iloc[0]
    assert diff["condition"] == "paper - baseline" and diff.excludes_zero and diff.lo > 0.01
    false_alarms = sum(
        bool(corpus.summarise(_frame(0.0, 30, seed), n_boot=500).query("kind == 'difference'").excludes_zero.iloc[0])
        for seed in range(40))
    assert false_alarms <= 6


def test_summarise_drops_documents_missing_a_condition():
    frame = _frame(0.1, 10, 1)
    frame = pd.concat([frame, pd.DataFrame([{"doc_id": "99", "condition": "baseline", "measure": "sink_mass",
                                             "layer": 0, "region": "", "value": 100.0}])])
    means = corpus.summarise(frame).query("kind == 'mean' and condition == 'baseline'")
    assert means["n"].iloc[0] == 10 and means["mean"].iloc[0] < 1
    with pytest.raises(ValueError, match="baseline"):
        corpus.summarise(frame[frame.condition == "paper"])


def test_value_norms_follow_grouped_query_heads():
    gen = torch.Generator().manual_seed(0)
    values, w_o = torch.randn(7, 2, 3, generator=gen), torch.randn(4, 3, 5, generator=gen)
    norms = ops.value_norms(values, w_o)
    expected = torch.stack([(values[:, h // 2, :] @ w_o[h]).norm(dim=-1) for h in range(4)])
    torch.testing.assert_close(norms, expected)
    torch.testing.assert_close(ops.value_norms(values, gram=ops.output_gram(w_o)), expected)
    with pytest.raises(ValueError, match="exactly one"):
        ops.value_norms(values)


def _causal_rows(early_sums: dict[tuple[str, str, int], float]) -> pd.DataFrame:
    """``attribution_nll`` rows whose early regions (doc 01, doc 02 of four) sum to ``early_sums``
    per (document, condition, band start), split 1 : 3 between them; every other region holds
    10, which a sum over the wrong regions would pick up."""
    rows = []
    for (doc_id, condition, layer), total in early_sums.items():
        values = {"sink": 10.0, "template": 10.0, "doc 01": 0.25 * total, "doc 02": 0.75 * total,
                  "doc 03": 10.0, "doc 04": 10.0, "instruction": 10.0}
        rows += [{"doc_id": doc_id, "condition": condition, "measure": "attribution_nll", "layer": layer,
                  "region": region, "value": value} for region, value in values.items()]
    rows.append({"doc_id": "a", "condition": "baseline", "measure": "sink_mass", "layer": 0, "region": "",
                 "value": 5.0})  # another measure: ignored
    return pd.DataFrame(rows)


CAUSAL_SUMS = {  # (document, condition, band start) -> early-document sum, nats/token
    **{(d, "baseline", 0): v for d, v in zip("abc", (0.1, 0.2, 0.3))},
    **{(d, "paper", 0): v for d, v in zip("abc", (0.15, 0.27, 0.33))},
    **{(d, "placebo", 0): v for d, v in zip("abc", (0.11, 0.21, 0.31))},
    **{(d, c, 2): v for c in ("baseline", "paper") for d, v in zip("abc", (-0.3, -0.1, -0.2))},
    **{(d, "placebo", 2): v for d, v in zip("abc", (-0.24, -0.04, -0.14))},
}


def test_early_document_attribution_sums_the_first_half_of_the_document_per_band():
    """The causal map's headline (README: the early document's estimated effect per band and
    paper - placebo): per document the sum of the first half's estimates, then means and paired
    contrasts over documents, band by band, with the bands' layer ranges."""
    contrasts = [("paper", "baseline"), ("paper", "placebo"), ("paper", "absent")]
    out = corpus.early_document_attribution(_causal_rows(CAUSAL_SUMS), contrasts, n_layers=5, n_boot=500)
    assert out["measure"] == "attribution_nll" and out["unit"] == "nats/token"
    assert out["regions"] == ["doc 01", "doc 02"]
    first, second = out["bands"]
    assert first["layers"] == [0, 1] and second["layers"] == [2, 4]
    assert list(first["means"]) == ["baseline", "paper", "placebo"]
    assert first["means"]["baseline"]["mean"] == pytest.approx(0.2)
    assert second["means"]["placebo"]["mean"] == pytest.approx(-0.14)
    by_name = {c["contrast"]: c for c in first["contrasts"]}
    assert set(by_name) == {"paper - baseline", "paper - placebo"}, "a pair without rows is left out"
    assert by_name["paper - placebo"]["mean"] == pytest.approx((0.04 + 0.06 + 0.02) / 3)
    assert by_name["paper - baseline"]["mean"] == pytest.approx((0.05 + 0.07 + 0.03) / 3)
    later = {c["contrast"]: c for c in second["contrasts"]}
    assert later["paper - placebo"]["mean"] == pytest.approx(-0.06)
    assert later["paper - baseline"]["mean"] == pytest.approx(0.0, abs=1e-12)
    for est in (*first["means"].values(), *first["contrasts"], *second["contrasts"]):
        assert est["ci95"][0] <= est["mean"] + 1e-12 <= est["ci95"][1] + 2e-12 and est["n"] == 3
    assert first["means"]["paper"]["ci95"][0] < first["means"]["paper"]["ci95"][1], "documents vary"


def test_early_document_attribution_counts_missing_documents_and_refuses_partial_ones():
    rows = _causal_rows(CAUSAL_SUMS)
    lacking = rows[~((rows.doc_id == "c") & (rows.condition == "placebo"))]
    out = corpus.early_document_attribution(lacking, [("paper", "placebo")], n_layers=5, n_boot=200)
    contrast = out["bands"][0]["contrasts"][0]
    assert (contrast["n"], contrast["n_missing"]) == (2, 1)
    assert contrast["mean"] == pytest.approx((0.04 + 0.06) / 2)
    assert out["bands"][0]["means"]["baseline"]["n"] == 3
    one_region_short = rows.drop(rows[(rows.doc_id == "a") & (rows.condition == "paper") & (rows.layer == 0)
                                      & (rows.region == "doc 02")].index)
    with pytest.raises(ValueError, match="document a under paper, band from layer 0"):
        corpus.early_document_attribution(one_region_short, [], n_layers=5)
    with pytest.raises(ValueError, match="expected one row"):
        corpus.early_document_attribution(pd.concat([rows, rows.iloc[[2]]]), [], n_layers=5)
    with pytest.raises(ValueError, match="5 layers"):
        corpus.early_document_attribution(rows.assign(layer=rows.layer * 3), [], n_layers=5)
    assert corpus.early_document_attribution(rows[rows.measure != "attribution_nll"], [], n_layers=5) is None


def test_interval_words_give_the_reason_or_the_warning_never_nan():
    """The corpus report's lines (``flow.py --docs``): one document has no interval, and says
    so; fewer than 10 documents are marked; an estimate without documents is n/a."""
    one = corpus.paired_contrast(_frame(0.1, 1, 0), "sink_mass", "paper", "baseline")
    assert one["ci95"] == [None, None]
    words = corpus.interval_words(one)
    assert words.endswith(", interval n/a (1 document; an interval needs >= 2)") and "nan" not in words
    few = corpus.interval_words(corpus.paired_contrast(_frame(0.1, 4, 0), "sink_mass", "paper", "baseline"))
    assert few.endswith("(excludes 0, n=4; 4 documents < 10: unreliable)")
    enough = corpus.paired_contrast(_frame(0.1, 12, 0), "sink_mass", "paper", "baseline")
    assert corpus.interval_words(enough).endswith("(excludes 0, n=12)")
    none = {"mean": None, "ci95": [None, None], "n": 0, "n_missing": 3,
            "reason": "no documents (3 without a value)"}
    assert corpus.interval_words(none) == "n/a (no documents (3 without a value))"


@pytest.mark.parametrize(("n_docs", "warning"), [
    (1, "Warning: only 1 document: these cells have no interval."),
    (3, "Warning: only 3 documents; intervals need >= 10: these intervals are unreliable."),
    (10, None)])
def test_findings_warn_when_the_documents_are_too_few(n_docs, warning):
    words = corpus.plain_words(corpus.summarise(_frame(0.1, n_docs, 0), n_boot=200))
    assert [w for w in words if w.startswith("Warning")] == ([warning] if warning else [])
