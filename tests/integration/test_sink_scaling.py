"""ZeroTuning-style sink scaling on the tiny model: the authors' arithmetic, the placebo's key,
query heads under GQA (chunked attention, batches and the cache: test_chunked, test_alternatives)."""

from __future__ import annotations

import pytest
import torch

from at_probe.interventions.sink_scaling import SinkScaling, placebo_column
from at_probe.models.names import pattern_hook
from at_probe.models.prompts import build_prompt

LAYER = 4


@pytest.fixture(scope="module")
def prompt(tiny_model, sample_text):
    return build_prompt(tiny_model.tokenizer, sample_text[:2500])


def zerotuning_reference(weights: torch.Tensor, rate: float, heads: list[int]) -> torch.Tensor:
    """Written from the authors' ``ZeroTuning_Attention`` (FeijiangHan/ZeroTuning): a scale matrix
    of ones with ``rate`` on column 0 of the chosen heads, multiplied in, then the chosen heads'
    rows divided by their sums."""
    scale = torch.ones_like(weights)
    scale[:, heads, :, 0] = rate
    out = weights * scale
    out[:, heads] = out[:, heads] / out[:, heads].sum(dim=-1, keepdim=True)
    return out


def capture_patterns(model, prompt, edit, layer=LAYER):
    """The pattern of ``layer`` before and after ``edit``'s hooks, for one prompt."""
    seen = {}

    def keep(key):
        def fn(pattern, *, hook):
            seen[key] = pattern.detach().clone()
        return fn

    pairs = [(pattern_hook(layer), keep("before"))] + edit.hooks(model, prompts=[prompt]) + \
        [(pattern_hook(layer), keep("after"))]
    with torch.inference_mode():
        model.run_with_hooks(prompt.tensor(), fwd_hooks=pairs)
    return seen["before"], seen["after"]


@pytest.mark.parametrize("rate", [0.3, 4.0])
def test_matches_the_authors_arithmetic(tiny_model, prompt, rate):
    heads = [1, 2]
    before, after = capture_patterns(tiny_model, prompt, SinkScaling(rate=rate, layers=(LAYER,), heads=heads))
    torch.testing.assert_close(after, zerotuning_reference(before, rate, heads))
    assert not torch.equal(after, before)
    torch.testing.assert_close(after.sum(-1), torch.ones_like(after.sum(-1)))


def test_only_the_given_query_heads_change_under_gqa(tiny_model, prompt):
    """Query heads 0 and 1 share a key-value head in the tiny model: editing head 0 leaves head 1."""
    cfg = tiny_model.cfg
    assert cfg.n_key_value_heads is not None and cfg.n_key_value_heads < cfg.n_heads
    before, after = capture_patterns(tiny_model, prompt, SinkScaling(rate=3.0, layers=(LAYER,), heads=(0,)))
    assert not torch.equal(after[:, 0], before[:, 0])
    assert torch.equal(after[:, 1:], before[:, 1:])


def test_placebo_scales_its_own_key_of_each_document(tiny_model, prompt):
    edit = SinkScaling(rate=4.0, layers=(LAYER,), placebo_seed=2)
    column = placebo_column(prompt.ids, 2)
    assert 1 <= column < len(prompt) and column == edit.column(_view(prompt))
    assert len({placebo_column(prompt.ids, s) for s in range(20)}) > 10
    before, after = capture_patterns(tiny_model, prompt, edit)
    assert torch.equal(after[..., :column, :], before[..., :column, :])  # rows that cannot see the key
    expected = before.clone()
    expected[..., column:, column] *= 4.0
    expected[..., column:, :] /= expected[..., column:, :].sum(-1, keepdim=True)
    torch.testing.assert_close(after, expected)
    with pytest.raises(ValueError, match="needs prompts"):
        edit.hooks(tiny_model)


def _view(prompt):
    from at_probe.interventions.base import SequenceView

    return SequenceView(0, len(prompt), 0, prompt)


@pytest.mark.parametrize("rate", [0, -1.0, float("nan"), float("inf"), 1e7, "2", True])
def test_bad_rates_are_refused_by_name(rate):
    with pytest.raises(ValueError, match="rate"):
        SinkScaling(rate=rate)


def test_head_profiling_takes_any_edit_of_one_head(tiny_model, prompt):
    """``profiling.profile_heads`` with sink edits: one replayed pass per head, equal to a whole
    pass with that head edited (the emphasis profiling's own test checks the replay further)."""
    from at_probe.interventions.profiling import profile_heads, rank_heads, top_heads
    from at_probe.interventions.sink_calibration import SinkCalibration

    reference = list(prompt.ids[5:25])
    tokens = torch.tensor([list(prompt.ids) + reference])
    t = len(prompt)

    def nll(edit):
        hooks = [] if edit is None else edit.hooks(tiny_model, prompts=[prompt])
        with torch.inference_mode():
            logp = tiny_model.run_with_hooks(tokens, fwd_hooks=hooks)[0, t - 1 : -1].log_softmax(-1)
        return float(-logp.gather(-1, tokens[0, t:, None]).mean())

    base = nll(None)
    for edit_for in (lambda l, h: SinkScaling(8.0, head_config={l: (h,)}),
                     lambda l, h: SinkCalibration({l: (h,)}, beta=0.0, threshold=0.02)):
        deltas = profile_heads(tiny_model, prompt, reference, edit_for)
        assert len(deltas) == 8 * 4 and len({round(d, 6) for d in deltas.values()}) > 10
        for layer, head in ((1, 0), (6, 3)):
            assert deltas[(layer, head)] == pytest.approx(nll(edit_for(layer, head)) - base, abs=1e-5)
        best = top_heads(rank_heads(deltas), 3)
        assert sum(len(h) for h in best.values()) == 3


def test_head_config_edits_exactly_those_heads(tiny_model, prompt):
    edit = SinkScaling(3.0, head_config={LAYER: (2,)})
    before, after = capture_patterns(tiny_model, prompt, edit)
    torch.testing.assert_close(after, zerotuning_reference(before, 3.0, [2]))
    with pytest.raises(ValueError, match="not both"):
        SinkScaling(3.0, layers=(1,), head_config={1: (0,)})
    with pytest.raises(ValueError, match="outside the model"):
        SinkScaling(3.0, head_config={99: (0,)}).hooks(tiny_model)
