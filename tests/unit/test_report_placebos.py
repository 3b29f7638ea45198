"""``xsum_report.py`` pairs every registered method with its placebo twins and never treats a
placebo as a candidate of the held-out selection (it reads the registry, not ``paper:``)."""

from __future__ import annotations

import numpy as np
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
