"""The parameter bounds of the interventions on the tiny model: the issue's refused values really
make every logit NaN, and the most extreme accepted values keep every logit finite."""

from __future__ import annotations

import math

import pytest
import torch

from at_probe.interventions.calibration import PositionBias, PositionCalibration
from at_probe.models.prompts import build_prompt
from at_probe.interventions.temperature import MIN_TAU, AttentionTemperature
from at_probe.interventions.transition import MAX_ROW_MASS, PaperTransition, PlaceboTransition, SRATransition

# densities 0.5 .. 1.5 in each of the tiny model's 8 layers; 0.5 ** -s leaves float32 at s = 128
BIAS = PositionBias(((0.5, 1.5, 1.0, 1.0),) * 8, 1)
LARGEST_STRENGTH = math.floor(math.log(torch.finfo(torch.float32).max) / math.log(2))


@pytest.fixture(scope="module")
def prompt(tiny_model, sample_text):
    p = build_prompt(tiny_model.tokenizer, sample_text)
    assert len(p) >= 400  # long enough for the paper transition to act
    return p


def _logits(model, edit, prompt):
    with edit.applied(model, prompts=[prompt]), torch.inference_mode():
        return model(prompt.tensor().to(model.cfg.device))


def _unchecked(edit, **fields):
    """``edit`` with ``fields`` set past the constructor's checks (what they now refuse)."""
    for name, value in fields.items():
        object.__setattr__(edit, name, value)
    return edit


def test_the_refused_values_make_every_logit_nan(tiny_model, prompt):
    for edit in (_unchecked(AttentionTemperature(tau=1.0), tau=1e-38),
                 _unchecked(PositionCalibration(BIAS, strength=1.0), strength=float("inf")),
                 _unchecked(PaperTransition(alpha=1.0, beta=0.5), beta=1e38)):
        assert _logits(tiny_model, edit, prompt).isnan().any(), edit
    with pytest.raises(ValueError, match="strength"):
        PositionCalibration(BIAS, strength=LARGEST_STRENGTH + 1)


@pytest.mark.parametrize("edit", [
    AttentionTemperature(tau=MIN_TAU, layers=range(8)),
    PositionCalibration(BIAS, strength=LARGEST_STRENGTH),
    PositionCalibration(BIAS, strength=LARGEST_STRENGTH, placebo_seed=1),
    PaperTransition(alpha=1.0, beta=MAX_ROW_MASS / 10),
    PlaceboTransition(alpha=1.0, beta=MAX_ROW_MASS / 10),
    SRATransition(begin_length=5, threshold_len=50, strengthen_factor_inter=MAX_ROW_MASS,
                  strengthen_factor_outer=MAX_ROW_MASS),
], ids=["temperature", "calibration", "calibration_placebo", "paper", "placebo", "sra"])
def test_the_most_extreme_accepted_values_keep_every_logit_finite(tiny_model, prompt, edit):
    logits = _logits(tiny_model, edit, prompt)
    assert logits.isfinite().all()
    with torch.inference_mode():
        assert (logits - tiny_model(prompt.tensor())).abs().max() > 1e-3  # the edit did act
