"""Settings strings and text metrics of the XSum pipeline."""

from __future__ import annotations

import pytest

from at_probe.xsum import metrics as text_metrics
from at_probe.interventions.transition import PaperTransition, PlaceboTransition, SRATransition
from at_probe.xsum import (
    PAPER_EXAMPLE,
    SettingError,
    development_sweep_settings,
    is_development,
    is_heldout,
    parse_setting,
    parse_settings,
    placebo_of,
    select_settings,
    run_settings,
)


def test_parse_settings_canonical_names_and_objects():
    s = parse_settings("baseline; paper:alpha=1,beta=0.5,k=2 ;placebo:beta=0.5,alpha=1,k=2,seed=3;sra:threshold_len=64")
    assert list(s) == ["baseline", "paper:alpha=1.0,beta=0.5,k=2", "placebo:alpha=1.0,beta=0.5,k=2,seed=3",
                       "sra:begin_length=100,elimi_factor_inter=0.5,elimi_factor_outer=0.3,"
                       "strengthen_factor_inter=4.0,strengthen_factor_outer=4.0,threshold_len=64"]
    values = list(s.values())
    assert values[0] is None
    assert values[1] == PaperTransition(alpha=1.0, beta=0.5, intervals_per_layer=2)
    assert isinstance(values[2], PlaceboTransition) and values[2].seed == 3
    assert isinstance(values[3], SRATransition) and values[3].threshold_len == 64


@pytest.mark.parametrize(
    "bad",
    ["", "nonsense", "paper:alpha", "paper:gamma=1", "paper:alpha=x", "paper:alpha=-1", "paper:k=0",
     "baseline;baseline", "sra:threshold_len=1.5", "paper:alpha=1,alpha=2", "paper:beta=inf"],
)
def test_bad_settings_raise(bad):
    with pytest.raises(SettingError):
        parse_settings(bad)


def test_same_setting_spelled_twice_is_a_duplicate():
    with pytest.raises(SettingError, match="twice"):
        parse_settings("paper:alpha=1;paper:alpha=1.0")
    assert parse_setting("paper:")[0] == "paper:alpha=1.0,beta=0.5,k=2"  # PaperTransition()'s defaults


def test_heldout_rule():
    assert is_heldout("34944736") and not is_heldout("34944735") and is_heldout(8)


def test_text_metrics_by_hand():
    doc = "The council voted to buy the harbour. The harbour was sold in 2013."
    assert text_metrics.repetition_rate("a b c d a b c d") == pytest.approx(1 - 4 / 5)
    assert text_metrics.repetition_rate("too short") == 0.0
    assert text_metrics.novel_bigram_share("the council voted yesterday", doc) == pytest.approx(1 / 3)
    pos = text_metrics.source_positions("the harbour was sold", doc)
    assert pos == [7 / 13, 8 / 13]
    r = text_metrics.rouge("The council votes to buy the harbour", "Council voted to buy harbour")
    assert r["rouge1"] > 0.7 and set(r) == {"rouge1", "rouge2", "rougeL"}


def test_development_sweep_is_the_papers_grid_and_the_sra_candidates():
    names = list(development_sweep_settings())
    paper = [n for n in names if n.startswith("paper:")]
    assert names[0] == "baseline" and len(paper) == 72 and len(names) == 75
    grid = {(t.alpha, t.beta, t.intervals_per_layer) for n, t in development_sweep_settings().items()
            if n.startswith("paper:")}
    assert grid == {(a, b, k) for a in (0.5, 1.0, 1.5) for b in (0.1, 0.3, 0.5, 0.8, 1.0, 1.5) for k in (1, 2, 3, 4)}
    sra = [t for n, t in development_sweep_settings().items() if n.startswith("sra:")]
    assert [(t.begin_length, t.threshold_len, t.strengthen_factor_inter) for t in sra] == [(100, 200, 4.0), (5, 50, 5.0)]
    assert is_development("34944735") and not is_development("34944736")


def _rows(table):
    return [{"doc_id": d, "setting": s, "summary_nll": v} for s, col in table.items() for d, v in col.items()]


def test_select_settings_lowest_mean_nll_over_common_documents():
    table = {"baseline": {"a": 2.0, "b": 2.0},
             "paper:alpha=1.0,beta=0.5,k=2": {"a": 1.9, "b": 2.0},
             # best on "a" and "b", but a third document it alone has would drag it down if counted
             "paper:alpha=0.5,beta=0.1,k=1": {"a": 1.5, "b": 1.9},
             "sra:x": {"a": 2.1, "b": 2.2}, "sra:y": {"a": 1.0, "b": 3.5}}
    rows = _rows(table) + [{"doc_id": "c", "setting": "paper:alpha=0.5,beta=0.1,k=1", "summary_nll": 9.0}]
    sel = select_settings(rows)
    assert sel["paper"] == "paper:alpha=0.5,beta=0.1,k=1" and sel["sra"] == "sra:x"
    assert sel["n_documents"] == 2 and sel["mean_nll"]["sra:y"] == pytest.approx(2.25)


def test_select_settings_ties_go_to_the_first_listed():
    table = {"baseline": {"a": 2.0}, "paper:alpha=1.5,beta=1.5,k=4": {"a": 1.0},
             "paper:alpha=0.5,beta=0.1,k=1": {"a": 1.0}, "sra:x": {"a": 1.0}}
    assert select_settings(_rows(table))["paper"] == "paper:alpha=1.5,beta=1.5,k=4"
    with pytest.raises(ValueError, match="sra"):
        select_settings(_rows({"baseline": {"a": 1.0}, "paper:alpha=1.0,beta=0.5,k=2": {"a": 1.0}}))


def test_test_settings_pair_each_paper_setting_with_its_placebo():
    sel = {"paper": "paper:alpha=1.5,beta=0.1,k=4", "sra": "sra:begin_length=5"}
    names = run_settings(sel)
    assert names == ["baseline", "paper:alpha=1.0,beta=0.5,k=2", "paper:alpha=1.5,beta=0.1,k=4",
                     "placebo:alpha=1.0,beta=0.5,k=2,seed=0", "placebo:alpha=1.5,beta=0.1,k=4,seed=0",
                     "sra:begin_length=5"]
    same = run_settings({"paper": parse_setting(PAPER_EXAMPLE)[0], "sra": "sra:x"})
    assert len(same) == len(set(same)) == 4
    assert placebo_of("paper:k=3,alpha=1,beta=0.3", seed=7) == "placebo:alpha=1.0,beta=0.3,k=3,seed=7"
    with pytest.raises(SettingError):
        placebo_of("sra:")


def test_a_setting_chunked_attention_refuses_is_caught_before_the_run():
    from dataclasses import dataclass

    from at_probe.interventions import registry
    from at_probe.models.chunked import refuse_chunked
    from at_probe.models.loading import SMOLLM2_SHAPE
    from at_probe.xsum import SettingError, check_settings, parse_settings

    @dataclass(frozen=True)
    class WholeRows:  # a method that needs every row at once, as a user may register
        def hooks(self, model, **kwargs):
            refuse_chunked(model, "WholeRows", "it reads whole patterns")
            return []

    registry.register(registry.Method("whole_rows", WholeRows, {}))
    try:
        settings = parse_settings("whole_rows:;sink_scaling:rate=2")
        check_settings(settings, SMOLLM2_SHAPE)
        with pytest.raises(SettingError, match=r"whole_rows.*--attention-rows 128.*whole patterns"):
            check_settings(settings, SMOLLM2_SHAPE, attention_rows=128)
    finally:
        registry.unregister("whole_rows")
    assert "_at_probe_chunked" not in vars(SMOLLM2_SHAPE)
    # every built-in method runs under chunked attention: ACT's sinks come from a pre-pass, Ms-PoE's
    # ranking from the layer's input
    check_settings(parse_settings("sink_calibration:;sink_calibration_placebo:;multiscale_positions:;"
                                  "multiscale_positions_placebo:;sink_scaling:rate=2"), SMOLLM2_SHAPE,
                   attention_rows=128)
