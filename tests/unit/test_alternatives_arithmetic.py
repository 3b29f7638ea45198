"""The alternatives' pure arithmetic, head selection, position bias and settings strings."""

from __future__ import annotations

import math

import pytest
import torch

from at_probe.interventions.calibration import (
    PositionBias,
    calibrate_rows_,
    document_region_bounds,
    position_bias_from_profiles,
)
from at_probe.interventions.emphasis import EmphasisSteering, steer_scores
from at_probe.interventions.profiling import rank_heads, top_heads
from at_probe.interventions.temperature import AttentionTemperature, temper_scores
from at_probe.xsum import (
    SettingError,
    canonical_selection,
    parse_setting,
    placebo_of,
    run_settings,
    select_alternatives,
    setting_roles,
)

MIN = torch.finfo(torch.float32).min


def _causal_scores(t: int = 6, heads: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(1, heads, t, t, generator=g)
    return s.masked_fill(torch.ones(t, t).triu(1).bool(), MIN)


def test_temperature_divides_unmasked_scores_and_keeps_the_mask():
    s = _causal_scores()
    out = temper_scores(s, 4.0, torch.tensor([1]))
    masked = s == MIN
    assert torch.equal(out[:, 0], s[:, 0])
    torch.testing.assert_close(out[:, 1][~masked[:, 1]], s[:, 1][~masked[:, 1]] / 4.0)
    assert (out[masked] == MIN).all()  # a naive division would turn MIN / 4 into a real score
    assert not torch.equal(out, s) and torch.equal(s, _causal_scores())  # the input is untouched


def test_emphasis_adds_log_alpha_outside_the_span_up_to_the_prompt_end():
    s = torch.zeros(1, 2, 3, 10)
    out = steer_scores(s, (3, 6), prompt_length=8, alpha=0.01, heads=torch.tensor([0]))
    shift = math.log(0.01)
    expected = torch.zeros(10)
    expected[:3] = shift
    expected[6:8] = shift  # keys 8, 9 were generated: never scaled
    torch.testing.assert_close(out[0, 0, 1], expected)
    assert torch.equal(out[0, 1], s[0, 1])


def test_calibration_reweights_by_region_and_conserves_document_mass():
    p = torch.zeros(1, 1, 3, 10)
    p[..., 0] = 0.2  # sink
    p[..., 1:9] = 0.1  # document: 8 tokens, 4 regions of 2
    weights = torch.tensor([1.0, 2.0, 2.0, 1.0])
    before = p.clone()
    shift = calibrate_rows_(p, (1, 9), weights, first_row=1)
    assert torch.equal(p[0, 0, 0], before[0, 0, 0])  # rows before first_row untouched
    torch.testing.assert_close(p[0, 0, 1:, 1:9].sum(-1), before[0, 0, 1:, 1:9].sum(-1))
    torch.testing.assert_close(p[0, 0, 1, 1:9], torch.tensor([1, 1, 2, 2, 2, 2, 1, 1.0]) * 0.8 / 12)
    torch.testing.assert_close(p[0, 0, 1:, 0], before[0, 0, 1:, 0])
    assert shift.shape == (1, 2) and (shift > 0).all()
    assert document_region_bounds((1, 9), 4) == [1, 3, 5, 7, 9]


def test_position_bias_weighs_every_document_equally():
    a = torch.tensor([[1.0, 3.0]])  # normalised: [0.5, 1.5]
    b = torch.tensor([[10.0, 10.0]])  # normalised: [1, 1]
    bias = position_bias_from_profiles([a, b])
    assert bias.density == ((0.75, 1.25),) and bias.n_documents == 2
    assert PositionBias.from_json(bias.to_json()) == bias
    with pytest.raises(ValueError, match="no documents"):
        position_bias_from_profiles([])


def test_rank_and_top_heads():
    ranking = rank_heads({(3, 1): 0.2, (0, 2): -0.5, (2, 0): -0.1, (0, 0): -0.1})
    assert [(r["layer"], r["head"]) for r in ranking] == [(0, 2), (0, 0), (2, 0), (3, 1)]
    assert top_heads(ranking, 3) == {0: (0, 2), 2: (0,)}
    with pytest.raises(ValueError, match="k must be"):
        top_heads(ranking, 5)


PROFILES = {
    "position_bias": PositionBias(((0.5, 1.5),) * 4, 2).to_json(),
    "head_ranking": {"document": rank_heads({(1, 0): -0.3, (2, 1): -0.2, (0, 0): 0.1})},
}


def test_alternative_settings_parse_to_canonical_names_and_objects():
    name, steer = parse_setting("emphasis:top=2", PROFILES)
    assert name == "emphasis:alpha=0.01,target=document,top=2"
    assert steer == EmphasisSteering({1: (0,), 2: (1,)}, alpha=0.01, target="document")
    name, temp = parse_setting("temperature:tau=0.8,layers=2-3")
    assert name == "temperature:layers=2-3,tau=0.8" and temp == AttentionTemperature(0.8, layers=(2, 3))
    name, cal = parse_setting("calibration_placebo:seed=1", PROFILES)
    assert name == "calibration_placebo:seed=1,strength=1.0" and cal.placebo_seed == 1
    assert (
        placebo_of("emphasis:top=2", profiles=PROFILES)
        == "emphasis_placebo:alpha=0.01,placebo=heads,seed=0,target=document,top=2"
    )
    assert (
        placebo_of("calibration:strength=0.5", profiles=PROFILES) == "calibration_placebo:seed=0,strength=0.5"
    )
    assert (
        placebo_of("emphasis:top=2", profiles=PROFILES, emphasis_placebo="span")
        == "emphasis_placebo:alpha=0.01,placebo=span,seed=0,target=document,top=2"
    )
    with pytest.raises(SettingError, match="no placebo"):
        placebo_of("temperature:tau=2")
    with pytest.raises(SettingError, match="emphasis_placebo applies"):
        placebo_of("calibration:strength=0.5", profiles=PROFILES, emphasis_placebo="span")


@pytest.mark.parametrize(
    "bad, match",
    [
        ("emphasis:top=2", "head_ranking"),  # no profiles given
        ("emphasis:top=9", "k must be"),
        ("emphasis:top=1,target=instruction", "no ranking"),
        ("emphasis:alpha=0.01", "needs top"),
        ("temperature:layers=3-1,tau=1", "bad value"),
        ("temperature:", "needs tau"),
        ("calibration:strength=-1", "strength"),
    ],
)
def test_bad_alternative_settings_raise(bad, match):
    with pytest.raises(SettingError, match=match):
        parse_setting(bad, None if bad == "emphasis:top=2" else PROFILES)


def test_alternatives_selection_roles_and_test_settings():
    rows = [
        {"doc_id": d, "setting": s, "summary_nll": v}
        for d in ("1", "2")
        for s, v in (
            ("baseline", 1.0),
            ("emphasis:alpha=0.01,target=document,top=1", 0.9),
            ("emphasis:alpha=0.01,target=document,top=2", 1.1),
            ("temperature:tau=0.8", 0.95),
            ("calibration:strength=1.0", 1.2),
        )
    ]
    sel = select_alternatives(rows, ("emphasis", "calibration", "temperature"))
    assert sel["selected"] == {
        "emphasis": "emphasis:alpha=0.01,target=document,top=1",
        "calibration": "calibration:strength=1.0",
        "temperature": "temperature:tau=0.8",
    }
    sel["profiles"] = PROFILES
    roles = setting_roles(sel)
    assert roles == {
        "baseline": "baseline",
        "emphasis_selected": "emphasis:alpha=0.01,target=document,top=1",
        "emphasis_placebo": "emphasis_placebo:alpha=0.01,placebo=heads,seed=0,target=document,top=1",
        "emphasis_span_placebo": "emphasis_placebo:alpha=0.01,placebo=span,seed=0,target=document,top=1",
        "calibration_selected": "calibration:strength=1.0",
        "calibration_placebo": "calibration_placebo:seed=0,strength=1.0",
        "temperature_selected": "temperature:tau=0.8",
    }
    assert run_settings(canonical_selection(sel)) == list(roles.values())


def test_placebo_settings_default_to_seed_zero_never_to_the_real_edit():
    """A placebo kind spelled without a seed is still the placebo (seed 0), as ``placebo:`` is."""
    name, cal = parse_setting("calibration_placebo:strength=1", PROFILES)
    assert name == "calibration_placebo:seed=0,strength=1.0" and cal.placebo_seed == 0
    name, steer = parse_setting("emphasis_placebo:top=1", PROFILES)
    assert steer.placebo_seed == 0 and steer.placebo == "heads" and "seed=0" in name
    _, steer = parse_setting("emphasis_placebo:top=1,placebo=span", PROFILES)
    assert steer.placebo == "span"


def test_heads_placebo_keeps_the_layers_and_head_counts():
    from at_probe.interventions.emphasis import placebo_heads

    config = {3: (0, 1, 2), 7: (4,)}
    doc = (1, 5, 9, 12)
    fake = placebo_heads(config, 9, seed=0, prompt_ids=doc)
    assert {l: len(h) for l, h in fake.items()} == {3: 3, 7: 1}
    assert fake == placebo_heads(config, 9, seed=0, prompt_ids=doc) and fake != config
    assert len({tuple(placebo_heads(config, 9, seed=s, prompt_ids=doc)[3]) for s in range(10)}) > 5


def test_heads_placebo_never_draws_a_steered_head():
    """The control must not share heads with the treatment (issue #20: seed 1, top 2 drew a
    steered head), whatever the seed and document."""
    from at_probe.interventions.emphasis import placebo_heads

    config = {16: (2, 6), 20: (0, 1, 3, 8)}
    for seed in range(30):
        for doc in range(10):
            fake = placebo_heads(config, 9, seed=seed, prompt_ids=(doc, 7, 7))
            for layer, heads in config.items():
                assert not set(fake[layer]) & set(heads)
    with pytest.raises(ValueError, match="too few other heads"):
        placebo_heads({4: (0, 1, 2, 3, 4)}, 9, seed=0, prompt_ids=(1,))


def test_heads_placebo_draws_per_document():
    """Each document gets its own draw (seeded by its ids), not one draw for the whole run."""
    from at_probe.interventions.emphasis import placebo_heads

    config = {3: (0, 1)}
    draws = {placebo_heads(config, 9, seed=2, prompt_ids=(doc, 11, 12))[3] for doc in range(20)}
    assert len(draws) > 5


def test_calibration_placebo_draws_a_permutation_per_document():
    from at_probe.interventions.calibration import PositionCalibration

    cal = PositionCalibration(PositionBias(((0.5, 1.0, 1.5, 2.0),) * 2, 1), placebo_seed=0)
    draws = {tuple(cal.weights(1, (0, 5, i)).tolist()) for i in range(12)}
    assert len(draws) > 3
    assert all(sorted(d) == sorted(cal.weights(1).tolist()) for d in draws)
