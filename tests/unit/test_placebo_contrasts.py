"""Corpus flow pairs each method with its placebo, by role name or, for ``flow.py --settings``,
through the registry's placebo twins (``at_probe.cli.flow_corpus.placebo_contrasts``)."""

from __future__ import annotations

from at_probe.cli.flow_corpus import placebo_contrasts


def test_roles_pair_by_name():
    names = ["baseline", "paper", "placebo", "emphasis", "emphasis_placebo", "emphasis_span_placebo",
             "calibration", "calibration_placebo", "temperature"]
    assert placebo_contrasts(names) == [("paper", "placebo"), ("emphasis", "emphasis_placebo"),
                                        ("emphasis", "emphasis_span_placebo"),
                                        ("calibration", "calibration_placebo")]


def test_settings_pair_through_the_registry_twins_only():
    paper, other = "paper:alpha=1.0,beta=0.5,k=2", "paper:alpha=1.0,beta=0.5,k=3"
    twin, seed1 = "placebo:alpha=1.0,beta=0.5,k=2,seed=0", "placebo:alpha=1.0,beta=0.5,k=2,seed=1"
    names = ["baseline", paper, other, twin, seed1, "temperature:tau=0.8", "sra:begin_length=100"]
    assert placebo_contrasts(names) == [(paper, twin), (paper, seed1)]


def test_a_placebo_without_its_method_is_not_paired():
    assert placebo_contrasts(["baseline", "placebo", "emphasis_placebo"]) == []
