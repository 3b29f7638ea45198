"""ACT-style sink calibration on the tiny model: the authors' arithmetic, detection from the
prompt's rows only, the placebo's keys, and chunked attention's pre-pass."""

from __future__ import annotations

import pytest
import torch

from at_probe.interventions.sink_calibration import (
    SinkCalibration,
    calibrate_sinks_,
    hidden_sinks,
    placebo_sinks,
)
from at_probe.models.chunked import ChunkedAttentionError, chunked_attention
from at_probe.models.names import pattern_hook
from at_probe.models.prompts import build_prompt
from tests.integration.test_sink_scaling import capture_patterns

LAYER = 4
THRESHOLD = 0.03  # the tiny model's hidden sinks are weaker than llama-7b's 0.1 ones


@pytest.fixture(scope="module")
def prompt(tiny_model, sample_text):
    return build_prompt(tiny_model.tokenizer, sample_text[:2500])


def act_reference(head: torch.Tensor, beta: float, threshold: float) -> torch.Tensor:
    """One head's ``[q, k]`` prefill map, written from the authors' ``atten_process_eval``
    (GATECH-EIC/ACT, ``models/llama_modelling_aug.py``): columns whose sum over the rows that see
    them, divided by ``[L, L-1, ..., 1]``, exceeds the threshold; the first detected one spared;
    the rest scaled by beta; the freed mass given to the other keys by their weights."""
    m = head.clone()
    length = m.shape[0]
    indices = torch.nonzero(m.sum(0) / torch.arange(length, 0, -1) > threshold).flatten()
    assert indices[0] == 0, "the reference spares the first detected key: it must be the sink here"
    indices = indices[1:]
    copied = m.clone()
    available = m[:, indices].sum(1) * (1 - beta)
    m[:, indices] *= beta
    copied[1:, indices] *= 0
    ratios = copied / copied.sum(1, keepdim=True)
    m = m + available[:, None] * ratios
    m[0, 0] = 1
    return m


def _patterns(model, prompt, edit, layer=LAYER):
    return capture_patterns(model, prompt, edit, layer)


def test_matches_the_authors_arithmetic(tiny_model, prompt):
    """On the heads whose first token is detected (the authors' code then spares it, as we always
    do), each calibrated head equals their arithmetic; the other heads are untouched."""
    plain, _ = _patterns(tiny_model, prompt, SinkCalibration({LAYER: (0,)}, beta=1.0))
    n = len(prompt)
    mean = plain[0, :, :n, :n].sum(-2) / torch.arange(n, 0, -1)
    heads = tuple(h for h in range(plain.shape[1]) if mean[h, 0] > THRESHOLD and (mean[h, 1:] > THRESHOLD).any())
    assert len(heads) >= 2, "the test needs heads with a detected first token and hidden sinks"
    before, after = _patterns(tiny_model, prompt, SinkCalibration({LAYER: heads}, beta=0.4, threshold=THRESHOLD))
    for h in range(before.shape[1]):
        expected = act_reference(before[0, h], 0.4, THRESHOLD) if h in heads else before[0, h]
        torch.testing.assert_close(after[0, h], expected)


def test_hidden_sinks_by_hand():
    """Mean over the rows that see each key; key 0 never counts; strictly above the threshold
    (weights that are exact in binary, so the means are exact)."""
    p = torch.zeros(1, 4, 4)
    p[0] = torch.tensor([[1.0, 0, 0, 0], [0.5, 0.5, 0, 0], [0.25, 0.5, 0.25, 0], [0.125, 0.125, 0.375, 0.375]])
    # received / rows that see it: key 1: 1.125 / 3 = 0.375, key 2: 0.625 / 2 = 0.3125, key 3: 0.375 / 1
    assert hidden_sinks(p, 4, 0.35).tolist() == [[False, True, False, True]]
    assert hidden_sinks(p, 4, 0.375).tolist() == [[False, False, False, False]]
    assert hidden_sinks(p, 3, 0.3).tolist() == [[False, True, False]]  # prompt rows only: 1.0 / 2, 0.25 / 1


def test_calibration_keeps_row_sums_and_damps_by_beta():
    gen = torch.Generator().manual_seed(0)
    p = torch.rand(1, 2, 6, 6, generator=gen).tril()
    p /= p.sum(-1, keepdim=True)
    sinks = torch.tensor([[False, True, False, False, True, False], [False] * 6])
    out = p.clone()
    calibrate_sinks_(out, sinks, 0.25)
    torch.testing.assert_close(out.sum(-1), p.sum(-1))
    torch.testing.assert_close(out[0, 0][:, [1, 4]], 0.25 * p[0, 0][:, [1, 4]])
    others = torch.tensor([True, False, True, True, False, True])
    rows = p[0, 0]
    freed = 0.75 * rows[:, ~others].sum(-1, keepdim=True)
    other_mass = rows[:, others].sum(-1, keepdim=True)
    torch.testing.assert_close(out[0, 0][:, others], rows[:, others] * (1 + freed / other_mass))
    assert torch.equal(out[0, 1], p[0, 1])


def test_placebo_damps_as_many_other_keys(tiny_model, prompt):
    edit = SinkCalibration(layers=(LAYER,), threshold=THRESHOLD, placebo_seed=1)
    before, after = _patterns(tiny_model, prompt, edit)
    real = hidden_sinks(before[0], len(prompt), THRESHOLD)
    fake = placebo_sinks(real, 1, LAYER, prompt.ids)
    assert torch.equal(fake.sum(-1), real.sum(-1)) and real.any()
    assert not (fake & real).any() and not fake[:, 0].any()
    assert not torch.equal(fake, placebo_sinks(real, 2, LAYER, prompt.ids))
    expected = before.clone()
    calibrate_sinks_(expected, fake, 0.4)
    torch.testing.assert_close(after, expected)


def test_chunked_attention_finds_the_sinks_in_a_prepass(tiny_model, prompt):
    """Blocks of 64 rows: a pre-pass sums the attention over every prompt row before the first
    block is edited, so every block gets the unchunked pass's sinks (bit for bit)."""
    edit = SinkCalibration(threshold=THRESHOLD)
    with edit.applied(tiny_model), torch.inference_mode():
        ref = tiny_model(prompt.tensor())
        ref_sinks = {k: v.clone() for k, v in edit._last_run.memory[0].items()}
        with chunked_attention(tiny_model, rows=64):
            out = tiny_model(prompt.tensor())
        sinks = edit._last_run.memory[0]
    assert sorted(sinks) == sorted(ref_sinks) and all(torch.equal(sinks[k], ref_sinks[k]) for k in sinks)
    assert any(v.any() for v in sinks.values())
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


def test_chunked_without_the_prepass_hooks_is_refused_with_the_reason(tiny_model, prompt):
    edit = SinkCalibration(threshold=THRESHOLD)
    pairs = [(n, fn) for n, fn in edit.hooks(tiny_model) if not n.endswith("ln1.hook_out")]
    with tiny_model.hooks(fwd_hooks=pairs), chunked_attention(tiny_model, rows=64), torch.inference_mode():
        with pytest.raises(ChunkedAttentionError, match="hidden sinks.*pre-pass|pre-pass.*hidden sinks"):
            tiny_model(prompt.tensor())


@pytest.mark.parametrize("kwargs, match", [
    (dict(beta=1.5), "beta"), (dict(beta=float("nan")), "beta"), (dict(threshold=0.0), "threshold"),
    (dict(threshold=1.0), "threshold"), (dict(head_config={}), "head_config"),
    (dict(head_config={3: (0,)}, layers=(3,)), "not both"),
])
def test_bad_parameters_are_refused_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SinkCalibration(**kwargs)


def test_each_prompt_finds_its_own_sinks(tiny_model, prompt, sample_text):
    """Under one set of hooks, a second prompt is calibrated with its own hidden sinks, not the
    first prompt's (the per-prompt memory is emptied at each new prompt)."""
    other = build_prompt(tiny_model.tokenizer, sample_text[1000:2800])
    edit = SinkCalibration(layers=(LAYER,), threshold=THRESHOLD)
    with torch.inference_mode():
        alone = tiny_model.run_with_hooks(other.tensor(), fwd_hooks=edit.hooks(tiny_model, prompts=[other]))
        with edit.applied(tiny_model):
            tiny_model(prompt.tensor())
            after_first = tiny_model(other.tensor())
    torch.testing.assert_close(after_first, alone)


def test_teacher_forced_rows_use_the_prompts_sinks(tiny_model, prompt):
    """A pass holding the prompt and more tokens finds the sinks from the prompt's rows only:
    its prompt rows are calibrated exactly as the prompt's own prefill."""
    edit = SinkCalibration(layers=(LAYER,), threshold=THRESHOLD)
    _, prefill = _patterns(tiny_model, prompt, edit)
    n = len(prompt)
    tokens = torch.tensor([list(prompt.ids) + list(prompt.ids[10:60])])
    seen = {}
    pairs = edit.hooks(tiny_model, prompts=[prompt]) + \
        [(pattern_hook(LAYER), lambda pattern, *, hook: seen.setdefault("after", pattern.detach().clone()))]
    with torch.inference_mode():
        tiny_model.run_with_hooks(tokens, fwd_hooks=pairs)
    torch.testing.assert_close(seen["after"][..., :n, :n], prefill)


def test_placebo_draws_per_head_not_per_position_in_the_selection():
    sinks = torch.zeros(2, 50, dtype=torch.bool)
    sinks[:, [3, 9, 20]] = True
    both = placebo_sinks(sinks, 0, 4, list(range(50)), heads=[3, 7])
    alone = placebo_sinks(sinks[1:], 0, 4, list(range(50)), heads=[7])
    assert torch.equal(both[1], alone[0]) and not torch.equal(both[0], both[1])
