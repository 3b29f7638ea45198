"""Development selection refuses a score that is not a finite number: a NaN mean would win
``min`` (nothing compares below NaN), and a NaN difference would vanish from the bootstrap."""

from __future__ import annotations

import pytest

from at_probe.xsum import minus_baseline, select_alternatives, select_settings

NAN = float("nan")


def _rows(table):
    return [{"doc_id": d, "setting": s, "summary_nll": v} for s, col in table.items() for d, v in col.items()]


def test_a_nan_summary_nll_cannot_win_the_transitions_selection():
    """Listed first, the NaN setting used to be returned as the best paper setting."""
    table = {"baseline": {"a": 2.0, "b": 2.0},
             "paper:alpha=0.5,beta=0.1,k=1": {"a": NAN, "b": 1.0},
             "paper:alpha=1.0,beta=0.5,k=2": {"a": 1.5, "b": 1.5},
             "sra:x": {"a": 2.1, "b": 2.2}}
    with pytest.raises(ValueError, match=r"'paper:alpha=0.5,beta=0.1,k=1' has summary_nll nan on document a"):
        select_settings(_rows(table))


@pytest.mark.parametrize("bad", [NAN, float("inf"), None])
def test_a_non_finite_summary_nll_cannot_win_the_alternatives_selection(bad):
    table = {"baseline": {"a": 1.0},
             "temperature:tau=0.8": {"a": bad},
             "temperature:tau=1.2": {"a": 0.9}}
    with pytest.raises(ValueError, match=r"'temperature:tau=0.8' has summary_nll"):
        select_alternatives(_rows(table), ("temperature",))


def test_minus_baseline_refuses_a_nan_difference():
    table = {"baseline": {"a": 1.0, "b": 1.0}, "temperature:tau=0.8": {"a": NAN, "b": 0.9}}
    with pytest.raises(ValueError, match=r"'temperature:tau=0.8' minus the baseline: 1 of the 2 values are"):
        minus_baseline(_rows(table), ["a", "b"])
