"""``xsum_report.py`` pairs every registered method with its placebo twins and never treats a
placebo as a candidate of the held-out selection (it reads the registry, not ``paper:``)."""

from __future__ import annotations

import numpy as np
import pytest
import pandas as pd

from at_probe.cli import xsum_report

EMPHASIS = "emphasis:alpha=0.01,target=document,top=8"
EMPHASIS_PLACEBO = "emphasis_placebo:alpha=0.01,placebo=heads,seed=0,target=document,top=8"
PAPER, PLACEBO = "paper:alpha=1.0,beta=0.5,k=2", "placebo:alpha=1.0,beta=0.5,k=2,seed=3"
SETTINGS = ["baseline", EMPHASIS, EMPHASIS_PLACEBO, PAPER, PLACEBO, "temperature:layers=15-29,tau=0.9"]


def frame(n_docs: int = 12) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [{"doc_id": str(d), "setting": s, **{m: float(rng.random()) for m in xsum_report.METRICS}}
            for d in range(n_docs) for s in SETTINGS]
    return pd.DataFrame(rows)


def test_every_method_is_compared_with_its_own_placebo():
    out = xsum_report.report(frame())
    assert set(out["vs_placebo"]) == {xsum_report.vs_label(EMPHASIS, EMPHASIS_PLACEBO),
                                      xsum_report.vs_label(PAPER, PLACEBO)}


def test_placebos_are_not_candidates_of_the_heldout_selection(monkeypatch):
    candidates = []
    real = xsum_report.heldout_selected_gain

    def spy(gains, **kwargs):
        candidates.append(gains.shape[1])  # [document, candidate setting]
        return real(gains, **kwargs)

    monkeypatch.setattr(xsum_report, "heldout_selected_gain", spy)
    xsum_report.report(frame())
    assert candidates and set(candidates) == {3}  # emphasis, paper, temperature: no placebo


OLD_ALTERNATIVE_COMPARISONS = (  # xsum_experiment.py's table before the comparisons came from the roles
    ("emphasis_selected", "baseline"), ("emphasis_selected", "emphasis_placebo"),
    ("emphasis_selected", "emphasis_span_placebo"), ("calibration_selected", "baseline"),
    ("calibration_selected", "calibration_placebo"), ("temperature_selected", "baseline"),
    ("emphasis_placebo", "baseline"), ("emphasis_span_placebo", "baseline"), ("calibration_placebo", "baseline"))


def test_alternative_comparisons_come_from_the_roles_in_the_committed_order():
    from at_probe.cli import xsum_experiment

    roles = {"baseline": "baseline", "emphasis_selected": "emphasis:top=2", "emphasis_placebo": "x",
             "emphasis_span_placebo": "y", "calibration_selected": "calibration:strength=0.5",
             "calibration_placebo": "z", "temperature_selected": "temperature:tau=1.15"}
    assert xsum_experiment.comparisons_for([roles]) == OLD_ALTERNATIVE_COMPARISONS
    peers = {"baseline": "baseline", "adaptive_temperature_selected": "adaptive_temperature:",
             "paper_prune_selected": "paper:parts=prune", "paper_prune_move_selected": "paper:parts=prune+move",
             "paper_prune_move_placebo": "placebo:parts=prune+move,seed=0"}
    assert xsum_experiment.comparisons_for([peers]) == (
        ("adaptive_temperature_selected", "baseline"), ("paper_prune_selected", "baseline"),
        ("paper_prune_move_selected", "baseline"), ("paper_prune_move_selected", "paper_prune_move_placebo"),
        ("paper_prune_move_placebo", "baseline")), "a part's placebo is its own, not a longer part's"
    transitions = {"baseline": "baseline", "paper_selected": "paper:", "placebo_selected": "placebo:"}
    assert xsum_experiment.comparisons_for([transitions]) == xsum_experiment.COMPARISONS
    with pytest.raises(xsum_experiment.ReportError, match="mix"):
        xsum_experiment.comparisons_for([transitions, roles])
