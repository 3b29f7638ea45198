"""Every option of the public API with a fixed set of values refuses an unknown one at once,
listing the valid values and suggesting the nearest."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from at_probe.flow import corpus

from at_probe import xsum
from at_probe.runs.choices import UnknownChoiceError, check_choice, choice_message
from at_probe.interventions.emphasis import EmphasisSteering
from at_probe.models.prompts import build_prompt
from at_probe.runs.stats import bootstrap_mean
from at_probe.xsum.metrics import rouge


def test_the_message_lists_the_choices_and_the_nearest():
    assert check_choice("colour", "red", ("red", "green")) == "red"
    with pytest.raises(UnknownChoiceError) as err:
        check_choice("colour", "gren", ("red", "green"))
    assert str(err.value) == "unknown colour 'gren': expected one of 'red', 'green'; did you mean 'green'?"
    assert choice_message("colour", "blue", ("red", "green")) == "unknown colour 'blue': expected one of 'red', 'green'"
    with pytest.raises(UnknownChoiceError):
        check_choice("colour", ["red"], ("red", "green"))  # unhashable: refused, not a TypeError


def _frame() -> pd.DataFrame:
    return pd.DataFrame([{"doc_id": str(d), "condition": c, "measure": "sink_mass", "layer": 0, "region": "",
                          "value": d + (c == "paper")} for d in range(3) for c in ("baseline", "paper")])


# (call, what the message names, the nearest valid value); each used to fail late, with a
# KeyError, or without the valid values
REFUSED = {
    "rouge tokenizer": (lambda: rouge("a b", "a b", tokenizer="unicod"), "'default', 'unicode'", "unicode"),
    "bootstrap missing": (lambda: bootstrap_mean(np.ones(3), missing="dorp"), "'raise', 'drop'", "drop"),
    "emphasis target": (lambda: EmphasisSteering({0: (0,)}, target="documnt"), "'document', 'instruction'",
                        "document"),
    "emphasis placebo": (lambda: EmphasisSteering({0: (0,)}, placebo="head"), "'span', 'heads'", "heads"),
    "setting kind": (lambda: xsum.parse_setting("papr:alpha=1"), "'baseline', 'paper', 'placebo'", "paper"),
    "setting key": (lambda: xsum.parse_setting("paper:alpah=1"), "alpha, beta, k", "alpha"),
    "setting target": (lambda: xsum.parse_setting("emphasis:top=2,target=instructon"),
                       "'document', 'instruction'", "instruction"),
    "setting placebo": (lambda: xsum.parse_setting("emphasis_placebo:top=2,placebo=spam"), "'span', 'heads'",
                        "span"),
    "xsum bucket": (lambda: xsum.bucket_file("data", "190"), "'800', '1200', '1600', '1900'", "1900"),
    "prompt style": (lambda: build_prompt(None, "text", style="chta"), "'chat', 'plain'", "chat"),
    "corpus baseline": (lambda: corpus.summarise(_frame(), baseline="basline"), "'baseline', 'paper'",
                        "baseline"),
    "contrast measure": (lambda: corpus.paired_contrast(_frame(), "sink", "paper", "baseline"), "'sink_mass'",
                         "sink_mass"),
    "contrast condition": (lambda: corpus.paired_contrast(_frame(), "sink_mass", "papr", "baseline"),
                           "'baseline', 'paper'", "paper"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_an_unknown_value_is_refused_with_the_choices(case):
    call, listed, nearest = REFUSED[case]
    with pytest.raises(ValueError) as err:
        call()
    message = str(err.value)
    assert listed in message and message.endswith(f"did you mean {nearest!r}?"), message
    assert "\n" not in message
