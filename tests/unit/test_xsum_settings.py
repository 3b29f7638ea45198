"""Settings strings and text metrics of the XSum pipeline."""

from __future__ import annotations

import pytest

from at_probe import text_metrics
from at_probe.transition import PaperTransition, PlaceboTransition, SRATransition
from at_probe.xsum import SettingError, is_heldout, parse_setting, parse_settings


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
    assert parse_setting("paper:")[0] == "paper:alpha=0.5,beta=0.1,k=2"


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
