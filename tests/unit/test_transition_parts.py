"""The paper transition taken apart (issue #23): prune, sink halving and mass move, each alone and
in pairs, written here from the spec's arithmetic, and the full version as all three together."""

from __future__ import annotations

import itertools

import pytest
import torch

from at_probe.interventions.registry import method
from at_probe.interventions.transition import PaperTransition, PlaceboTransition, dispense
from at_probe.interventions.transition_ops import PARTS, RowStats, check_parts, dispense_span_
from at_probe.xsum.settings import SettingError, parse_settings, placebo_of
from tests.unit.test_transition import causal_pattern

SPANS = [(40, 50), (50, 60)]  # the second span's window [30, 50) overlaps the first's rows
FIRST = [(10, 20)]  # the first-interval branch
ALPHA, BETA = 1.0, 0.5


def parts_by_hand(p: torch.Tensor, spans: list[tuple[int, int]], alpha: float, beta: float,
                  parts: set[str]) -> torch.Tensor:
    """The spec's three steps, applied span by span, with the full version's moved mass and mask."""
    out = p.clone()
    for s, e in spans:
        n, tau = e - s, alpha / e
        rows = out[..., s:e, :e].clone()
        full = torch.where(rows < tau, 0.0, rows)
        full[..., 0] /= 2
        moved = beta * (1 - full.sum(-1, keepdim=True))
        if "prune" in parts:
            rows = torch.where(rows < tau, 0.0, rows)
        if "sink" in parts:
            rows[..., 0] /= 2
        if "move" in parts:
            lo, fill, weight = (0, 0.001, torch.full((n,), 10.0)) if s == n else \
                (s - 2 * n, 0.01, torch.cat((torch.full((n,), 3.0), torch.full((n,), 7.0))))
            mask = torch.where(full[..., lo:s] >= tau, 1.0, fill)
            rows[..., lo:s] += moved / mask.sum(-1, keepdim=True) * weight * mask
        out[..., s:e, :e] = rows
    return out


SELECTIONS = [set(c) for r in (1, 2, 3) for c in itertools.combinations(PARTS, r)]


@pytest.mark.parametrize("parts", SELECTIONS, ids=lambda s: "+".join(p for p in PARTS if p in s))
@pytest.mark.parametrize("spans", [SPANS, FIRST], ids=["history", "first-interval"])
def test_each_selection_of_parts_matches_the_spec_steps(parts, spans):
    p = causal_pattern(t=90)
    torch.testing.assert_close(dispense(p, spans, ALPHA, BETA, parts=tuple(parts)),
                               parts_by_hand(p, spans, ALPHA, BETA, parts))


@pytest.mark.parametrize("spans", [SPANS, FIRST], ids=["history", "first-interval"])
def test_the_full_version_is_its_three_parts_together(spans):
    """The removals and the addition compose: (prune + sink) plus what move adds is the paper
    version, and the three parts named is the paper version itself (the same bits)."""
    p = causal_pattern(t=90)
    full = dispense(p, spans, ALPHA, BETA)
    assert torch.equal(dispense(p, spans, ALPHA, BETA, parts=("move", "sink", "prune")), full)
    apart = p.clone()  # the three parts' own code path (check_parts would name them None)
    for span in spans:
        dispense_span_(apart, span, ALPHA, BETA, conserve_mass=False, parts=PARTS)
    assert torch.equal(apart, full)
    removed = dispense(p, spans, ALPHA, BETA, parts=("prune", "sink"))
    added = dispense(p, spans, ALPHA, BETA, parts=("move",)) - p
    torch.testing.assert_close(removed + added, full)
    assert torch.equal(removed, dispense(p, spans, ALPHA, 0.0))  # beta = 0 moves nothing
    assert not torch.allclose(removed, full) and not torch.allclose(added + p, full)


def test_move_alone_adds_the_mass_the_full_version_frees():
    p = causal_pattern(t=90)
    stats_full, stats_move = RowStats(), RowStats()
    for stats, parts in ((stats_full, None), (stats_move, ("move",))):
        dispense_span_(p.clone(), SPANS[0], ALPHA, BETA, conserve_mass=False, stats=stats, parts=parts)
    torch.testing.assert_close(stats_move.added[0], stats_full.added[0])
    assert stats_full.freed[0].min() > 0
    torch.testing.assert_close(stats_move.freed[0], torch.zeros_like(stats_move.freed[0]), atol=1e-6, rtol=0)


def test_a_placebo_without_the_move_is_the_same_edit_and_refused():
    """Nothing is moved, so the placebo's random window changes nothing: the twin of a
    removals-only setting would be the setting itself (with the move it differs), so it is
    refused, as a class and as a setting."""
    p = causal_pattern(t=90)
    for parts, same in ((("prune", "sink"), True), (("move",), False)):
        real = dispense(p, SPANS, ALPHA, BETA, parts=parts)
        moved = p.clone()
        for span in SPANS:
            dispense_span_(moved, span, ALPHA, BETA, conserve_mass=False, target_start=0, parts=parts)
        assert torch.equal(real, moved) is same
    with pytest.raises(ValueError, match="include 'move'"):
        PlaceboTransition(parts=("prune", "sink"))
    with pytest.raises(SettingError, match="include 'move'"):
        placebo_of("paper:parts=sink")
    assert placebo_of("paper:parts=sink+move") == "placebo:alpha=1.0,beta=0.5,k=2,parts=sink+move,seed=0"


def test_parts_are_checked_and_named_once():
    assert check_parts(None) is None and check_parts(list(PARTS)) is None
    assert check_parts(["move", "prune"]) == ("prune", "move")
    for bad in ([], ["prune", "prune"], ["drop"], "prune"):
        with pytest.raises(ValueError):
            check_parts(bad)
    with pytest.raises(ValueError):
        PaperTransition(parts=("sinks",))
    assert PaperTransition(parts=PARTS) == PaperTransition()
    assert method("paper").build({"parts": None})[1] == "paper:alpha=1.0,beta=0.5,k=2"
    names = parse_settings("paper:parts=move+prune+sink;paper:parts=sink+prune;placebo:parts=move,seed=2")
    assert list(names) == ["paper:alpha=1.0,beta=0.5,k=2", "paper:alpha=1.0,beta=0.5,k=2,parts=prune+sink",
                           "placebo:alpha=1.0,beta=0.5,k=2,parts=move,seed=2"]
    assert names["placebo:alpha=1.0,beta=0.5,k=2,parts=move,seed=2"] == PlaceboTransition(parts=("move",), seed=2)
    with pytest.raises(SettingError, match="did you mean 'prune'"):
        parse_settings("paper:parts=prun")
