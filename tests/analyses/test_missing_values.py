"""The reports say what they do with undefined values: an optional metric's undefined documents
are left out and counted (``n_missing``), a NaN anywhere else is an error, never dropped."""

from __future__ import annotations

import pandas as pd
import pytest

from at_probe.flow.corpus import paired_contrast, summarise
from tests.analyses.conftest import load_script

xsum_report = load_script("xsum_report")
xsum_experiment = load_script("xsum_experiment")

PAPER = "paper:alpha=1.0,beta=0.5,k=2"


def _report_frame(**overrides):
    """Four documents under baseline and paper; ``overrides[metric] = (doc, setting, value)``."""
    rows = [{"doc_id": str(d), "setting": s, **{m: 0.5 + 0.1 * d + (s == PAPER) for m in xsum_report.METRICS}}
            for d in range(4) for s in ("baseline", PAPER)]
    frame = pd.DataFrame(rows)
    for metric, (doc, setting, value) in overrides.items():
        frame.loc[(frame.doc_id == doc) & (frame.setting == setting), metric] = value
    return frame


def test_report_counts_the_documents_where_the_source_position_is_undefined():
    rep = xsum_report.report(_report_frame(source_position_mean=("2", PAPER, None)))
    est = rep["vs_baseline"][PAPER]["source_position_mean"]
    assert est["n"] == 3 and est["n_missing"] == 1 and est["mean"] == pytest.approx(1.0)
    assert "n_missing" not in rep["vs_baseline"][PAPER]["rougeL"]  # always defined: nothing to leave out
    assert rep["means"][PAPER]["source_position_mean"] == pytest.approx((1.5 + 1.6 + 1.8) / 3)


@pytest.mark.parametrize("metric", ["summary_nll", "rougeL"])
def test_report_refuses_a_nan_in_a_metric_that_is_always_defined(metric):
    """It used to drop the document from that metric's estimate, silently."""
    with pytest.raises(ValueError, match=f"{metric} of {PAPER} - baseline: 1 of the 4 values are NaN"):
        xsum_report.report(_report_frame(**{metric: ("1", PAPER, float("nan"))}))


def _experiment_run(undefined: dict[str, float | None]):
    roles = {"baseline": "baseline", "paper_example": "P", "paper_selected": "P", "placebo_example": "Q",
             "placebo_selected": "Q", "sra_selected": "S"}
    rows = [{"doc_id": str(d), "setting": s, **{m: float(d) for m in xsum_experiment.METRICS}}
            for d in range(3) for s in ("baseline", "P", "Q", "S")]
    frame = pd.DataFrame(rows)
    for metric, value in undefined.items():
        frame.loc[(frame.doc_id == "0") & (frame.setting == "P"), metric] = value
    return {"bucket": "800", "roles": roles, "settings": ["baseline", "P", "Q", "S"]}, frame


def test_experiment_report_counts_undefined_source_positions_and_refuses_other_nans():
    result = xsum_experiment.experiment_report([_experiment_run({"source_position_mean": None})])
    block = result["comparisons"]["paper_selected - placebo_selected"]["source_position_mean"]
    assert block["all"]["n"] == 2 and block["all"]["n_missing"] == 1 and block["800"]["n_missing"] == 1
    primary = result["primary"]["estimate"]
    assert primary["n"] == 3 and "n_missing" not in primary
    with pytest.raises(xsum_experiment.ReportError, match="semantic_similarity of paper_selected - "):
        xsum_experiment.experiment_report([_experiment_run({"semantic_similarity": float("nan")})])


def _flow_frame(value_of_doc_1_paper: float):
    rows = [{"doc_id": str(d), "condition": c, "measure": "sink_mass", "layer": 0, "region": "",
             "value": 0.1 * d + (c == "paper")} for d in range(3) for c in ("baseline", "paper")]
    rows[3]["value"] = value_of_doc_1_paper  # doc 1, paper
    return pd.DataFrame(rows)


def test_corpus_summary_refuses_a_nan_measure_and_the_contrast_counts_unpaired_documents():
    with pytest.raises(ValueError, match="NaN"):
        summarise(_flow_frame(float("nan")))
    assert summarise(_flow_frame(1.1))["n"].tolist() == [3, 3, 3]
    frame = _flow_frame(1.1)
    unpaired = frame[~((frame.doc_id == "2") & (frame.condition == "paper"))]
    contrast = paired_contrast(unpaired, "sink_mass", "paper", "baseline")
    assert contrast["n"] == 2 and contrast["n_missing"] == 1 and contrast["mean"] == pytest.approx(1.0)
