"""The transition arithmetic beyond the fixtures: validation, invariants, variants."""

from __future__ import annotations

import pytest
import torch

from at_probe.interventions.transition import (
    PaperTransition,
    PlaceboTransition,
    SRATransition,
    dispense,
    paper_schedule,
    sra_layer,
)


def causal_pattern(batch: int = 1, heads: int = 2, t: int = 60, seed: int = 0) -> torch.Tensor:
    """Random causal softmax pattern with a sink on key 0 (float32)."""
    gen = torch.Generator().manual_seed(seed)
    scores = 2.0 * torch.randn(batch, heads, t, t, generator=gen)
    scores[..., 0] += 3.0
    mask = torch.ones(t, t, dtype=torch.bool).tril()
    return scores.masked_fill(~mask, float("-inf")).softmax(-1)


def test_schedule_too_short_and_bad_lengths():
    assert paper_schedule(399) == {}
    assert paper_schedule(0) == {}
    assert paper_schedule(400, n_layers=8, intervals_per_layer=2)[1] == [(80, 120), (120, 160)]
    for bad in (-1, 3.5, "400", True):
        with pytest.raises(ValueError):
            paper_schedule(bad)  # type: ignore[arg-type]


def test_schedule_layers_and_bounds():
    """Layers 1..L-3 are scheduled; every span lies inside the prompt with 2n keys of history."""
    for t in (400, 777, 1900):
        for k in (1, 2, 3, 4):
            sched = paper_schedule(t, 32, k)
            assert sorted(sched) == list(range(1, 30))
            for spans in sched.values():
                for s, e in spans:
                    assert 2 * (e - s) <= s < e <= t


def test_dispense_hand_computed_row():
    """One row worked by hand: threshold, halved sink, 7:3 redistribution over the window."""
    t = 12
    p = torch.zeros(1, 1, t, t)
    p[0, 0, 9, :10] = torch.tensor([0.3, 0.01, 0.2, 0.05, 0.1, 0.02, 0.15, 0.07, 0.05, 0.05])
    span = (9, 10)  # n = 1: window keys [7, 9), older = key 7, recent = key 8
    alpha, beta = 0.5, 1.0  # tau = 0.05
    out = dispense(p, [span], alpha, beta)
    row = p[0, 0, 9, :10].clone()
    row[row < 0.05] = 0
    row[0] /= 2
    r = 1 - row.sum()
    m = torch.tensor([1.0, 1.0])  # keys 7 (0.07) and 8 (0.05) are >= tau
    a = beta * r / m.sum()
    row[7] += 3 * a
    row[8] += 7 * a
    torch.testing.assert_close(out[0, 0, 9, :10], row)
    untouched = torch.ones(t, dtype=torch.bool)
    untouched[9] = False
    assert torch.equal(out[0, 0, untouched], p[0, 0, untouched])


def test_dispense_first_interval_branch():
    """A span starting one interval in uses window [0, n), fill 0.001 and weight 10."""
    p = causal_pattern(t=30)
    out = dispense(p, [(10, 20)], 0.5, 0.5)
    blk = p[..., 10:20, :20].clone()
    tau = 0.5 / 20
    blk[blk < tau] = 0
    blk[..., 0] /= 2
    r = 1 - blk.sum(-1, keepdim=True)
    m = torch.where(blk[..., :10] >= tau, 1.0, 0.001)
    blk[..., :10] += 10 * (0.5 * r / m.sum(-1, keepdim=True)) * m
    torch.testing.assert_close(out[..., 10:20, :20], blk)


def test_dispense_does_not_conserve_mass_unless_asked():
    p = causal_pattern(t=90)
    spans = [(40, 50), (50, 60)]
    loose = dispense(p, spans, 1.0, 1.5)
    assert loose[..., 40:60, :].sum(-1).max() > 1.5
    kept = dispense(p, spans, 1.0, 1.5, conserve_mass=True)
    torch.testing.assert_close(kept.sum(-1), p.sum(-1))
    assert not torch.allclose(kept, p)


@pytest.mark.parametrize(
    "spans, alpha, beta",
    [
        ([(40, 50)], 0.0, 0.1),
        ([(40, 50)], 1.0, -0.1),
        ([(50, 40)], 1.0, 0.1),
        ([(20, 30), (25, 35)], 1.0, 0.1),
        ([(15, 25)], 1.0, 0.1),  # 10 keys of history, needs 20 (and start != n)
        ([(80, 100)], 1.0, 0.1),  # past the end
    ],
)
def test_dispense_rejects_bad_input(spans, alpha, beta):
    p = causal_pattern(t=90)
    with pytest.raises(ValueError):
        dispense(p, spans, alpha, beta)


def test_dispense_rejects_non_4d():
    with pytest.raises(ValueError, match="4-d"):
        dispense(torch.rand(3, 60, 60), [(40, 50)], 1.0, 0.1)


def test_dispense_bf16_matches_float32_within_bf16_precision():
    p = causal_pattern(t=90)
    out32 = dispense(p, [(40, 50)], 1.0, 0.5)
    out16 = dispense(p.bfloat16(), [(40, 50)], 1.0, 0.5)
    assert out16.dtype == torch.bfloat16
    torch.testing.assert_close(out16.float(), out32, atol=2e-2, rtol=2e-2)


def test_sra_last_layer_and_short_sequences_untouched():
    p = causal_pattern(t=80)
    kw = dict(begin_length=5, threshold_len=20, elimi_factor_inter=0.5, elimi_factor_outer=0.5,
              strengthen_factor_inter=5, strengthen_factor_outer=5)
    assert torch.equal(sra_layer(p, 7, 8, **kw), p)
    short = causal_pattern(t=20)
    assert torch.equal(sra_layer(short, 2, 8, **kw), short)
    assert not torch.equal(sra_layer(p, 2, 8, **kw), p)
    with pytest.raises(ValueError):
        sra_layer(p, 8, 8, **kw)
    with pytest.raises(ValueError):
        sra_layer(p, 2, 8, **{**kw, "elimi_factor_inter": 0})


def test_sra_batch_rows_use_their_own_length():
    """Each sequence of a batch uses its own valid length (the original read row 0 for outer)."""
    kw = dict(begin_length=5, threshold_len=20, elimi_factor_inter=0.5, elimi_factor_outer=0.5,
              strengthen_factor_inter=5, strengthen_factor_outer=5)
    long, short = causal_pattern(t=100, seed=1), causal_pattern(t=70, seed=2)
    batch = torch.zeros(2, 2, 100, 100)
    batch[0], batch[1, :, :70, :70] = long[0], short[0]
    out = sra_layer(batch, 3, 8, **kw)
    torch.testing.assert_close(out[0:1], sra_layer(long, 3, 8, **kw))
    torch.testing.assert_close(out[1:2, :, :70, :70], sra_layer(short, 3, 8, **kw))


@pytest.mark.parametrize(
    "factory",
    [
        lambda: PaperTransition(alpha=0),
        lambda: PaperTransition(beta=-1),
        lambda: PaperTransition(intervals_per_layer=0),
        lambda: PaperTransition(layers=(-1,)),
        lambda: PaperTransition(layers="12"),
        lambda: SRATransition(threshold_len=-5),
        lambda: SRATransition(strengthen_factor_outer=-1),
        lambda: PlaceboTransition(alpha=-1),
        lambda: PaperTransition(beta=float("inf")),
        lambda: PaperTransition(alpha=float("nan")),
        lambda: PaperTransition(beta=0.0, conserve_mass=True),
        lambda: SRATransition(strengthen_factor_inter=float("inf")),
    ],
)
def test_invalid_parameters_raise_at_construction(factory):
    with pytest.raises(ValueError):
        factory()


@pytest.mark.parametrize(("alpha", "beta", "conserve_mass", "match"), [
    (1.0, float("inf"), False, "finite"),
    (float("inf"), 0.5, False, "finite"),
    (1.0, 0.0, True, "conserve_mass"),
])
def test_dispense_refuses_parameters_that_give_nan(alpha, beta, conserve_mass, match):
    """beta = inf gives NaN rows and conserve_mass with beta = 0 divides 0 by 0: refused."""
    with pytest.raises(ValueError, match=match):
        dispense(causal_pattern(t=90), [(40, 50)], alpha, beta, conserve_mass=conserve_mass)


def test_numpy_integers_are_accepted_as_plain_ints():
    import numpy as np

    tr = PaperTransition(alpha=np.float32(1.0), beta=0.5, intervals_per_layer=np.int64(3),
                         layers=np.arange(1, 4), heads=[np.int32(0)])
    assert tr.intervals_per_layer == 3 and type(tr.intervals_per_layer) is int
    assert tr.layers == (1, 2, 3) and all(type(l) is int for l in tr.layers) and tr.heads == (0,)
    assert paper_schedule(np.int64(800), np.int64(32), np.int64(2)) == paper_schedule(800, 32, 2)
    assert SRATransition(threshold_len=np.int64(50)).threshold_len == 50
