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


def _logits(model, ids, pairs, rows=None, **kwargs):
    with torch.inference_mode():
        if rows is None:
            return model.run_with_hooks(ids, fwd_hooks=pairs, **kwargs)
        with chunked_attention(model, rows=rows):
            return model.run_with_hooks(ids, fwd_hooks=pairs, **kwargs)


def test_chunked_teacher_forcing_detects_from_the_prompt_rows_only(tiny_model, prompt):
    """A pass of prompt + continuation with ``prompt_lengths``: the pre-pass sums the prompt's rows
    only, as the unchunked pass does; lengths that do not fit the pass are refused."""
    edit = SinkCalibration(threshold=THRESHOLD, beta=0.1)
    ids = torch.cat([prompt.tensor(), prompt.tensor()[:, 5:45]], dim=1)
    ref = _logits(tiny_model, ids, edit.hooks(tiny_model, prompt_lengths=[len(prompt)]))
    ref_sinks = {k: v.clone() for k, v in edit._last_run.memory[0].items() if k[0] == "sinks"}
    out = _logits(tiny_model, ids, edit.hooks(tiny_model, prompt_lengths=[len(prompt)]), rows=64)
    sinks = {k: v for k, v in edit._last_run.memory[0].items() if k[0] == "sinks"}
    assert sorted(sinks) == sorted(ref_sinks) and all(torch.equal(sinks[k], ref_sinks[k]) for k in sinks)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="prompt_lengths"):
        _logits(tiny_model, ids, edit.hooks(tiny_model, prompt_lengths=[ids.shape[1] + 3]), rows=64)


def test_each_set_of_hooks_reads_its_own_prepass(tiny_model, prompt):
    """Hooks built twice from one edit: the first set, registered alone, still finds its sinks."""
    edit = SinkCalibration(threshold=THRESHOLD, beta=0.1)
    ref = _logits(tiny_model, prompt.tensor(), edit.hooks(tiny_model))
    first = edit.hooks(tiny_model)
    edit.hooks(tiny_model)  # a newer set, never registered
    torch.testing.assert_close(_logits(tiny_model, prompt.tensor(), first, rows=64), ref, rtol=0, atol=1e-5)


def test_later_passes_of_a_prompt_measure_nothing_again(tiny_model, prompt, monkeypatch):
    """A cache-less continuation knows its prompt's sinks: only the first calibrated layer, where
    the pass is not yet known to continue the prompt, asks for a pre-pass."""
    import at_probe.interventions.sink_calibration as module
    from at_probe.interventions.tracking import generating

    asked = []
    real = module.request_prepass
    monkeypatch.setattr(module, "request_prepass", lambda model, layer, *a, **k: (asked.append(layer), real(model, layer, *a, **k)))
    edit = SinkCalibration(threshold=THRESHOLD, layers=(2, 4, 6))
    longer = torch.cat([prompt.tensor(), prompt.tensor()[:, 5:6]], dim=1)
    with tiny_model.hooks(fwd_hooks=edit.hooks(tiny_model)), chunked_attention(tiny_model, rows=64), \
            generating(tiny_model), torch.inference_mode():
        tiny_model(prompt.tensor())
        assert asked == [2, 4, 6]
        tiny_model(longer)  # a step of generate(..., use_past_kv_cache=False)
    assert asked == [2, 4, 6, 2]


def test_a_failing_prepass_leaves_every_hook_in_place(tiny_model, prompt):
    """A right-padded batch: the pre-pass refuses it, and the attention's hooks are restored."""
    from at_probe.models.chunked import request_prepass

    ids = prompt.tensor()[:, :200].repeat(2, 1)
    mask = torch.ones_like(ids)
    mask[1, -20:] = 0  # right padding
    seen = []
    probe = (pattern_hook(3), lambda t, *, hook: seen.append(t.shape[-2]))

    def refuse(pattern, block):
        raise ValueError("refused")

    with chunked_attention(tiny_model, rows=64), torch.inference_mode():
        request_prepass(tiny_model, 3, refuse)
        with pytest.raises(ValueError, match="refused"):
            tiny_model.run_with_hooks(ids, fwd_hooks=[probe], attention_mask=mask)
        seen.clear()
        tiny_model.run_with_hooks(ids, fwd_hooks=[probe])
    assert seen == [64, 64, 64, 8]  # the probe fires once per block, nothing suspended
    assert "_at_probe_prepass" not in vars(tiny_model.blocks[3].attn)


def test_pending_requests_are_dropped_with_chunked_attention(tiny_model):
    from at_probe.models.chunked import request_prepass

    with chunked_attention(tiny_model, rows=64):
        request_prepass(tiny_model, 2, lambda pattern, block: None)
    assert "_at_probe_prepass" not in vars(tiny_model.blocks[2].attn)
