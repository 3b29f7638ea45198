"""Flow reductions against direct computation on small random causal patterns."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from at_probe.flow import ops
from tests.unit.test_transition import causal_pattern


@pytest.fixture
def p() -> torch.Tensor:
    return causal_pattern(batch=1, heads=1, t=23, seed=5)[0, 0]


def test_region_bounds_cover_the_sequence():
    b = ops.region_bounds(23, 4)
    assert b[0] == 0 and b[1] == 1 and b[-1] == 23 and len(b) == 6
    assert (b[1:] > b[:-1]).all()
    assert ops.region_labels(b)[0] == "sink" and len(ops.region_labels(b)) == 5
    with pytest.raises(ValueError):
        ops.region_bounds(4, 4)
    with pytest.raises(ValueError):
        ops.region_bounds(20, 0)


def test_key_region_mass_direct(p):
    b = ops.region_bounds(23, 4).tolist()
    km = ops.key_region_mass(p, torch.tensor(b))
    for q in range(23):
        for r in range(len(b) - 1):
            assert km[q, r].item() == pytest.approx(p[q, b[r] : b[r + 1]].sum().item(), abs=1e-6)
    torch.testing.assert_close(km.sum(-1), p.sum(-1))  # region masses sum to the row sum


def test_region_to_region_direct(p):
    bounds = ops.region_bounds(23, 4)
    b = bounds.tolist()
    grid = ops.region_to_region(ops.key_region_mass(p, bounds), bounds)
    for f in range(len(b) - 1):
        rows = p[b[f] : b[f + 1]]
        for t in range(len(b) - 1):
            expected = rows[:, b[t] : b[t + 1]].sum(-1).mean().item()
            assert grid[f, t].item() == pytest.approx(expected, abs=1e-6)
    torch.testing.assert_close(grid.sum(-1), torch.ones(len(b) - 1))
    assert torch.triu(grid, 1).abs().max() == 0  # causal: no mass on later regions


def test_sink_entropy_distance_direct(p):
    assert ops.sink_mass(p).item() == pytest.approx(p[1:, 0].mean().item())
    ent = np.mean([-sum(x * math.log(x) for x in row.tolist() if x > 0) for row in p[1:]])
    assert ops.row_entropy(p).item() == pytest.approx(ent, rel=1e-5)
    dist = np.mean([sum(row[k].item() * (q - k) for k in range(q + 1)) for q, row in enumerate(p) if q > 0])
    assert ops.attention_distance(p).item() == pytest.approx(dist, rel=1e-5)


def _numpy_rollout(mats: list[np.ndarray]) -> np.ndarray:
    """attention_flow's compute_joint_attention semantics, as an oracle."""
    joint = None
    for a in mats:
        aug = a + np.eye(a.shape[0])
        aug = aug / aug.sum(-1, keepdims=True)
        joint = aug if joint is None else aug @ joint
    return joint


def test_rollout_against_numpy_oracle():
    mats = [causal_pattern(heads=3, t=9, seed=s)[0].mean(0) for s in range(4)]
    joint = None
    for m in mats:
        joint = ops.rollout_step(joint, m)
    np.testing.assert_allclose(joint.numpy(), _numpy_rollout([m.numpy() for m in mats]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(joint.sum(-1), torch.ones(9))


def test_rollout_hand_example():
    """Two tokens, token 1 attends fully to token 0 in both layers."""
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    joint = ops.rollout_step(ops.rollout_step(None, a), a)
    # aug = [[1, 0], [0.5, 0.5]]; aug @ aug = [[1, 0], [0.75, 0.25]]
    torch.testing.assert_close(joint, torch.tensor([[1.0, 0.0], [0.75, 0.25]]))


def test_knockout_zeroes_and_renormalises(p):
    before = p.clone()
    out = ops.knockout(p[None, None], 5, 9)[0, 0]
    assert torch.equal(p, before), "knockout must not modify its input"
    torch.testing.assert_close(ops.knockout_(p.clone(), 5, 9), out)
    assert out[9:, 5:9].abs().max() == 0
    torch.testing.assert_close(out[9:].sum(-1), p[9:].sum(-1))
    assert torch.equal(out[:9], p[:9])  # rows before the region's end untouched


def test_knockout_of_unattended_region_is_identity():
    p = causal_pattern(heads=1, t=12)[0, 0].clone()
    p[4:, 2:4] = 0
    p = p / p.sum(-1, keepdim=True)
    torch.testing.assert_close(ops.knockout(p, 2, 4), p)


def test_rollout_rows_equal_chained_rollout_steps():
    maps = torch.stack([causal_pattern(heads=2, t=11, seed=s)[0].mean(0) for s in range(5)])
    maps[2] *= 1.3  # rows not summing to 1, as after the paper transition
    rows = ops.rollout_rows(maps)
    joint = None
    for l in range(5):
        joint = ops.rollout_step(joint, maps[l])
        torch.testing.assert_close(rows[l], joint[-1], atol=1e-6, rtol=1e-5)


def test_row_summary_and_blocked_entropy_match_direct_functions():
    p = causal_pattern(heads=1, t=37, seed=9)[0, 0] * 1.2  # rows not summing to 1
    bounds = ops.region_bounds(37, 5)
    key_mass, mean_key = ops.row_summary(p, bounds)
    torch.testing.assert_close(key_mass, ops.key_region_mass(p, bounds))
    q = torch.arange(1, 37, dtype=torch.float32)
    torch.testing.assert_close((q - mean_key[1:]).mean(), ops.attention_distance(p))
    torch.testing.assert_close(key_mass[1:, 0].mean(), ops.sink_mass(p))
    for block in (1, 5, 36, 100):
        torch.testing.assert_close(ops.row_entropy(p, causal_block=block), ops.row_entropy(p))


def test_entropy_ignores_rounding_negatives_after_the_transition():
    """A row summing to just over 1 gives dispense a negative freed mass, and zeroed entries of
    its window go slightly negative (faithful to the original); entropy must stay finite."""
    from at_probe.interventions.transition import dispense

    p = causal_pattern(heads=1, t=60, seed=4)
    p[0, 0, 45] = 0.0
    p[0, 0, 45, 20:30] = 0.1000001  # sums to 1 + 1e-6; keys 30..39 of the window are zero
    out = dispense(p, [(40, 50)], 0.5, 1.0)
    assert (out < 0).any()
    assert torch.isfinite(ops.row_entropy(out[0, 0]))
    torch.testing.assert_close(ops.row_entropy(out[0, 0]), ops.row_entropy(out[0, 0].clamp(min=0)))


def test_probe_entropy_counts_zeros_and_rounding_negatives_as_zero_and_keeps_nan():
    """The probe's blocked entropy (``p log p`` left out where NaN: zeros and the transition's
    negatives) equals ``ops.row_entropy`` on such a pattern; a NaN of the pattern still gives NaN."""
    import warnings
    from types import SimpleNamespace

    from at_probe.flow.probe import FlowProbe
    from at_probe.interventions.transition import dispense

    p = causal_pattern(heads=2, t=150, seed=4)
    p[0, 0, 145] = 0.0
    p[0, 0, 145, 20:30] = 0.1000001  # as above: the window's zeroed keys go slightly negative
    out = dispense(p, [(140, 150)], 0.5, 1.0)
    assert (out < 0).any()

    def entropy(pattern: torch.Tensor) -> torch.Tensor:
        probe = FlowProbe(1, 2, regions=4)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # log of zeros and negatives: no warning per block
            probe._hook(pattern, hook=SimpleNamespace(name="blocks.0.attn.hook_pattern"))
        return probe.result().entropy[0]

    got = entropy(out)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, torch.stack([ops.row_entropy(out[0, h]) for h in range(2)]))
    out[0, 1, 100, 3] = float("nan")
    with_nan = entropy(out)
    assert with_nan[1].isnan() and with_nan[0].isfinite()


def test_probe_log_agrees_with_torch_log_on_both_paths():
    """``_log`` (NumPy on the CPU, torch otherwise: here a non-contiguous ``out``) gives torch's
    log within float32 rounding, ``-inf`` at zeros and NaN below zero, from a strided input."""
    from at_probe.flow.block_sums import _log

    x = torch.rand(3, 8, 40)[:, :, :33]
    x[0, 0, :3] = torch.tensor([0.0, -1e-9, 1e-40])
    expected = torch.log(x)
    out = torch.empty(x.shape)
    _log(x, out=out)
    torch.testing.assert_close(out, expected, equal_nan=True)
    strided = torch.empty(33, 8, 3).permute(2, 1, 0)
    _log(x, out=strided)
    torch.testing.assert_close(strided, expected, equal_nan=True)
    assert out[0, 0, 0] == float("-inf") and out[0, 0, 1].isnan()
