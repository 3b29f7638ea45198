"""Every intervention refuses parameters that would make NaN logits (non-finite, or finite but
overflowing what the edit computes), by name, at construction and through settings strings."""

from __future__ import annotations

import math

import pytest
import torch

from at_probe.interventions.calibration import PositionBias, PositionCalibration
from at_probe.interventions.emphasis import EmphasisSteering
from at_probe.interventions.profiling import rank_heads
from at_probe.interventions.temperature import MIN_TAU, AttentionTemperature, temper_scores
from at_probe.interventions.transition import (
    MAX_ROW_MASS,
    PaperTransition,
    PlaceboTransition,
    SRAParams,
    SRATransition,
    dispense,
    sra_layer,
)
from at_probe.xsum import SettingError, parse_setting

NAN, INF = float("nan"), float("inf")
BIAS = PositionBias(((0.6, 1.4),) * 4, 2)  # a region of density 0.6, as in the issue
PROFILES = {"position_bias": BIAS.to_json(),
            "head_ranking": {"document": rank_heads({(1, 0): -0.3, (2, 1): -0.2})}}


@pytest.mark.parametrize("tau", [1e-38, NAN, INF, -INF, 0.0, -1.0, 1e-4, 1e39])
def test_temperature_refuses_taus_that_overflow_or_are_not_finite(tau):
    with pytest.raises(ValueError, match="tau"):
        AttentionTemperature(tau=tau)


def test_the_smallest_temperature_keeps_realistic_scores_finite():
    """At MIN_TAU scores of a few hundred stay finite in float32 and bfloat16 (1e-38 does not)."""
    assert AttentionTemperature(tau=MIN_TAU).tau == MIN_TAU
    scores = torch.full((1, 1, 2, 2), 300.0)
    for dtype in (torch.float32, torch.bfloat16):
        assert temper_scores(scores.to(dtype), MIN_TAU).isfinite().all()
        assert not temper_scores(scores.to(dtype), 1e-38).isfinite().all()  # what the bound prevents


@pytest.mark.parametrize("strength", [INF, NAN, 200.0, 1e6, -1.0])
def test_calibration_refuses_strengths_whose_weights_are_not_finite_in_float32(strength):
    """0.6 ** -200 = 2e44 overflows float32 although 200 is finite."""
    with pytest.raises(ValueError, match="strength"):
        PositionCalibration(BIAS, strength=strength)


def test_calibration_accepts_the_largest_strength_that_stays_in_float32():
    limit = math.log(torch.finfo(torch.float32).max) / -math.log(0.6)  # 0.6 ** -s <= float32 max
    assert PositionCalibration(BIAS, strength=math.floor(limit)).strength == math.floor(limit)
    with pytest.raises(ValueError, match="layer 0, region 0"):
        PositionCalibration(BIAS, strength=math.ceil(limit))


@pytest.mark.parametrize("density", [(NAN, 1.0), (1.0, NAN), (INF, 1.0), (-0.5, 1.5), (NAN, 0.0)])
def test_a_position_bias_with_a_nan_infinite_or_negative_density_is_refused(density):
    """A NaN first in a region list used to hide from ``min`` (``min([nan, 0.0])`` is NaN)."""
    with pytest.raises(ValueError, match="density"):
        PositionCalibration(PositionBias((density,) * 4, 2), strength=1.0)


def test_a_zero_density_is_a_measurement_but_cannot_be_calibrated():
    bias = PositionBias(((1.0, 0.0),) * 4, 2)
    with pytest.raises(ValueError, match="bias must be positive"):
        PositionCalibration(bias, strength=0.5)
    with pytest.raises(ValueError, match="density"):
        PositionBias.from_json({"density": [[1.0, 2.0], [1.0]], "n_documents": 1})  # ragged


@pytest.mark.parametrize("alpha", [NAN, INF, 0.0, -0.1, 1.5])
def test_emphasis_refuses_alphas_outside_0_1(alpha):
    with pytest.raises(ValueError, match="alpha"):
        EmphasisSteering({1: (0,)}, alpha=alpha)


@pytest.mark.parametrize(("factory", "name"), [
    (lambda: PaperTransition(beta=1e38), "beta"),  # finite, but rows of 1e39 overflow: NaN logits
    (lambda: PaperTransition(beta=MAX_ROW_MASS), "beta"),
    (lambda: PlaceboTransition(beta=1e30), "beta"),
    (lambda: PaperTransition(alpha=INF), "alpha"),
    (lambda: PaperTransition(alpha=NAN), "alpha"),
    (lambda: SRATransition(strengthen_factor_inter=1e38), "strengthen_factor_inter"),
    (lambda: SRAParams(strengthen_factor_outer=MAX_ROW_MASS * 2), "strengthen_factor_outer"),
    (lambda: SRATransition(strengthen_factor_outer=NAN), "strengthen_factor_outer"),
    (lambda: SRATransition(elimi_factor_inter=INF), "elimi_factor_inter"),
    (lambda: SRATransition(elimi_factor_outer=NAN), "elimi_factor_outer"),
    (lambda: dispense(torch.rand(1, 1, 90, 90), [(40, 50)], 1.0, 1e38), "beta"),
    (lambda: sra_layer(torch.rand(1, 1, 90, 90), 2, 8, begin_length=5, threshold_len=20,
                       elimi_factor_inter=0.5, elimi_factor_outer=0.5, strengthen_factor_inter=1e38,
                       strengthen_factor_outer=5), "strengthen_factor_inter"),
])
def test_transitions_refuse_non_finite_and_overflowing_parameters_by_name(factory, name):
    with pytest.raises(ValueError, match=name):
        factory()


def test_transition_bounds_keep_the_papers_grid_and_sra_factors():
    assert PaperTransition(beta=MAX_ROW_MASS / 10).beta == 100.0
    assert SRATransition(strengthen_factor_inter=MAX_ROW_MASS).strengthen_factor_inter == MAX_ROW_MASS


@pytest.mark.parametrize(("text", "name"), [
    ("temperature:tau=nan", "tau"),
    ("temperature:tau=inf", "tau"),
    ("temperature:tau=1e-38", "tau"),
    ("calibration:strength=inf", "strength"),
    ("calibration:strength=nan", "strength"),
    ("calibration:strength=200", "strength"),
    ("calibration_placebo:strength=200,seed=1", "strength"),
    ("emphasis:top=1,alpha=nan", "alpha"),
    ("paper:beta=1e38", "beta"),
    ("placebo:alpha=nan", "alpha"),
    ("sra:strengthen_factor_outer=1e38", "strengthen_factor_outer"),
])
def test_settings_strings_refuse_the_same_values(text, name):
    with pytest.raises(SettingError, match=name):
        parse_setting(text, PROFILES)
