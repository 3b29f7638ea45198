"""The alternatives (emphasis, calibration, temperature, sink scaling) as live hooks on the tiny model:
exact against their pure functions, batch-safe, cache-safe, and each placebo a real control."""

from __future__ import annotations

import pytest
import torch

from at_probe.interventions.calibration import PositionBias, PositionCalibration, calibrate_rows_, document_region_bounds
from at_probe.interventions.emphasis import EmphasisSteering, placebo_span, steer_scores
from at_probe.models.names import pattern_hook, scores_hook
from at_probe.models.prompts import build_prompt
from at_probe.interventions.adaptive_temperature import AdaptiveTemperature
from at_probe.interventions.sink_calibration import SinkCalibration
from at_probe.interventions.sink_scaling import SinkScaling
from at_probe.interventions.temperature import AttentionTemperature, temper_scores
from at_probe.xsum import left_pad

N_LAYERS = 8  # the tiny model


def _bias(regions: int = 4) -> PositionBias:
    """A made-up, clearly non-flat bias: early and late regions favoured, the middle not."""
    row = tuple(2.0 if r in (0, regions - 1) else 0.5 for r in range(regions))
    return PositionBias((row,) * N_LAYERS, n_documents=1)


EDITS = {
    "emphasis": EmphasisSteering({5: (0, 2), 6: (1,)}, alpha=0.05),
    "emphasis_instruction": EmphasisSteering({5: (0, 2), 6: (1,)}, alpha=0.05, target="instruction"),
    "calibration": PositionCalibration(_bias(), strength=1.0),
    "temperature": AttentionTemperature(tau=3.0, layers=(3, 6)),  # tau > 2 must keep the mask
    "sink_scaling": SinkScaling(rate=0.3, layers=(2, 5), heads=(0, 3)),
    "sink_scaling_placebo": SinkScaling(rate=0.3, layers=(2, 5), heads=(0, 3), placebo_seed=1),
    "sink_calibration": SinkCalibration({4: (0, 1), 5: (2, 3)}, threshold=0.03),
    "sink_calibration_placebo": SinkCalibration({4: (0, 1), 5: (2, 3)}, threshold=0.03, placebo_seed=1),
    "adaptive_temperature": AdaptiveTemperature(layers=(3, 6), heads=(0, 2)),
}


# Stronger versions for generation, where a weak edit may leave greedy tokens unchanged.
STRONG = {
    "emphasis": EmphasisSteering({l: tuple(range(4)) for l in range(2, 8)}, alpha=0.01),
    "emphasis_instruction": EmphasisSteering(
        {l: tuple(range(4)) for l in range(2, 8)}, alpha=0.01, target="instruction"
    ),
    "calibration": PositionCalibration(_bias(), strength=2.0, layers=tuple(range(1, 8))),
    "temperature": EDITS["temperature"],
    "sink_scaling": SinkScaling(rate=50.0),
    "sink_scaling_placebo": SinkScaling(rate=100.0, placebo_seed=1),
    "sink_calibration": SinkCalibration(beta=0.0, threshold=0.02, layers=tuple(range(1, 8))),
    "sink_calibration_placebo": SinkCalibration(beta=0.0, threshold=0.01, layers=tuple(range(8)), placebo_seed=1),
    "adaptive_temperature": AdaptiveTemperature(),
}


@pytest.fixture(scope="module")
def prompt(tiny_model, sample_text):
    return build_prompt(tiny_model.tokenizer, sample_text[:2500])


@pytest.fixture(scope="module")
def short_prompt(tiny_model, sample_text):
    return build_prompt(tiny_model.tokenizer, sample_text[:1500])


def _logits(model, prompt, edit=None):
    hooks = [] if edit is None else edit.hooks(model, prompts=[prompt])
    with torch.inference_mode():
        return model.run_with_hooks(prompt.tensor(), fwd_hooks=hooks)


@pytest.mark.parametrize("name", list(EDITS))
def test_edit_changes_logits_and_hooks_are_removed(tiny_model, prompt, name):
    base = _logits(tiny_model, prompt)
    with EDITS[name].applied(tiny_model, prompts=[prompt]), torch.inference_mode():
        edited = tiny_model(prompt.tensor())
    assert (edited - base).abs().max() > 1e-3
    assert torch.equal(_logits(tiny_model, prompt), base)
    report = EDITS[name].last_report()
    assert report.layers and all(r.rows_edited > 0 for r in report.layers.values())


@pytest.mark.parametrize(
    "edit",
    [
        EmphasisSteering({5: (0,)}, alpha=1.0),
        AttentionTemperature(tau=1.0),
        PositionCalibration(_bias(), strength=0.0),
        SinkScaling(rate=1.0),
        SinkCalibration(beta=1.0),
    ],
    ids=["alpha1", "tau1", "strength0", "rate1", "beta1"],
)
def test_neutral_parameters_change_nothing(tiny_model, prompt, edit):
    torch.testing.assert_close(
        _logits(tiny_model, prompt, edit), _logits(tiny_model, prompt), atol=1e-5, rtol=0
    )


def _capture(store: dict, key: str):
    def fn(tensor, *, hook):
        store[key] = tensor.detach().clone()

    return fn


@pytest.mark.parametrize("name", ["emphasis", "temperature", "calibration"])
def test_hook_edit_equals_pure_function(tiny_model, prompt, name):
    """What the hook writes is exactly the pure function applied to what it received."""
    edit, layer, seen = EDITS[name], 6, {}
    hook = pattern_hook(layer) if name == "calibration" else scores_hook(layer)
    pairs = (
        [(hook, _capture(seen, "before"))]
        + edit.hooks(tiny_model, prompts=[prompt])
        + [(hook, _capture(seen, "after"))]
    )
    with torch.inference_mode():
        tiny_model.run_with_hooks(prompt.tensor(), fwd_hooks=pairs)
    before = seen["before"]
    if name == "emphasis":
        expected = steer_scores(before, prompt.parts["document"], len(prompt), 0.05, torch.tensor([1]))
    elif name == "temperature":
        expected = temper_scores(before, 3.0)
    else:
        expected = before.clone()
        calibrate_rows_(expected, prompt.document, edit.weights(layer, prompt.ids), first_row=prompt.document[1])
    torch.testing.assert_close(seen["after"], expected, atol=0, rtol=0)
    assert not torch.equal(seen["after"], before)


def test_emphasis_scales_non_span_prompt_weights_by_alpha(tiny_model, prompt):
    """PASTA 'exclude': on a steered head, weights outside the span shrink by alpha relative to
    weights inside it (ratios within the row), other heads are untouched."""
    seen = {}
    edit = EmphasisSteering({6: (1,)}, alpha=0.05)
    for key, pairs in (("base", []), ("steer", edit.hooks(tiny_model, prompts=[prompt]))):
        with torch.inference_mode():
            tiny_model.run_with_hooks(
                prompt.tensor(), fwd_hooks=pairs + [(pattern_hook(6), _capture(seen, key))]
            )
    start, end = prompt.parts["document"]
    row = len(prompt) - 1
    base, steer = seen["base"][0, :, row], seen["steer"][0, :, row]
    ratio = steer[1] / base[1]
    torch.testing.assert_close(ratio[:start] / ratio[start], torch.full((start,), 0.05), rtol=1e-3, atol=0)
    torch.testing.assert_close(
        ratio[end:] / ratio[start], torch.full((row + 1 - end,), 0.05), rtol=1e-3, atol=0
    )
    torch.testing.assert_close(ratio[start:end], ratio[start].expand(end - start), rtol=1e-4, atol=0)
    torch.testing.assert_close(steer[0], base[0])


def test_calibration_conserves_mass_and_spares_document_rows(tiny_model, prompt):
    seen = {}
    edit = PositionCalibration(_bias(), strength=1.0, layers=(6,))
    for key, pairs in (("base", []), ("cal", edit.hooks(tiny_model, prompts=[prompt]))):
        with torch.inference_mode():
            tiny_model.run_with_hooks(
                prompt.tensor(), fwd_hooks=pairs + [(pattern_hook(6), _capture(seen, key))]
            )
    base, cal = seen["base"][0], seen["cal"][0]
    start, end = prompt.document
    torch.testing.assert_close(cal[:, :end], base[:, :end], atol=0, rtol=0)  # rows inside the document
    torch.testing.assert_close(cal.sum(-1), base.sum(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        cal[:, end:, start:end].sum(-1), base[:, end:, start:end].sum(-1), atol=1e-5, rtol=0
    )
    bounds = document_region_bounds(prompt.document, 4)
    middle = slice(bounds[1], bounds[3])
    assert (
        cal[:, end:, middle].sum(-1) > base[:, end:, middle].sum(-1)
    ).all()  # the disfavoured middle gains


@pytest.mark.parametrize("name", list(EDITS))
def test_left_padded_batch_equals_alone(tiny_model, prompt, short_prompt, name):
    """Each sequence gets its own span, rows and keys under left padding."""
    edit = EDITS[name]
    prompts = [prompt, short_prompt]
    ids, mask = left_pad(tiny_model, [list(p.ids) for p in prompts])
    pad = ids.shape[1] - len(short_prompt)
    assert pad > 50
    with edit.applied(tiny_model, prompts=prompts), torch.inference_mode():
        batch = tiny_model(ids, attention_mask=mask)
    for row, p in enumerate(prompts):
        alone = _logits(tiny_model, p, edit)
        torch.testing.assert_close(batch[row, pad if row else 0 :], alone[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", list(EDITS))
def test_generation_cached_equals_uncached(tiny_model, prompt, short_prompt, name):
    """These edits act at every pass: decode steps (one query row) and cache-less full passes
    must edit the same rows and keys, in a left-padded batch too."""
    edit = STRONG[name]
    prompts = [prompt, short_prompt]
    ids, mask = left_pad(tiny_model, [list(p.ids) for p in prompts])
    kw = dict(attention_mask=mask, max_new_tokens=12, do_sample=False, verbose=False, stop_at_eos=False)
    with torch.inference_mode():
        with edit.applied(tiny_model, prompts=prompts):
            cached = tiny_model.generate(ids, use_past_kv_cache=True, **kw)
        with edit.applied(tiny_model, prompts=prompts):
            uncached = tiny_model.generate(ids, use_past_kv_cache=False, **kw)
        plain = tiny_model.generate(ids, use_past_kv_cache=True, **kw)
    assert torch.equal(cached, uncached)
    assert not torch.equal(cached, plain), "the edit must change generation for this test to mean anything"


def test_emphasis_placebo_span_has_the_targets_length_and_is_stable(prompt):
    start, end = prompt.parts["instruction"]
    span = placebo_span(prompt.ids, end - start, seed=0)
    assert span[1] - span[0] == end - start and 0 <= span[0] and span[1] <= len(prompt)
    assert span == placebo_span(prompt.ids, end - start, seed=0)
    assert len({placebo_span(prompt.ids, end - start, seed=s) for s in range(10)}) > 5
    steer = EmphasisSteering({5: (0,)}, target="instruction", placebo_seed=3)
    assert steer.span(prompt) == placebo_span(prompt.ids, end - start, seed=3) != (start, end)


def test_emphasis_placebo_changes_output_differently(tiny_model, prompt):
    real = EmphasisSteering({5: (0, 2), 6: (1,)}, alpha=0.05, target="instruction")
    fake = EmphasisSteering({5: (0, 2), 6: (1,)}, alpha=0.05, target="instruction", placebo_seed=0)
    base = _logits(tiny_model, prompt)
    a, b = _logits(tiny_model, prompt, real), _logits(tiny_model, prompt, fake)
    assert (b - base).abs().max() > 1e-3 and (a - b).abs().max() > 1e-3


def test_emphasis_heads_placebo_is_steering_on_its_own_random_heads(tiny_model, prompt, short_prompt):
    """The random-heads placebo equals ``EmphasisSteering`` of the same target and alpha on the
    heads it drew for that document: it keeps the emphasised span (the document) and changes
    only the heads. A left-padded batch of two documents gets each document's own draw."""
    config = {5: (0, 2), 6: (1,)}
    fake = EmphasisSteering(config, alpha=0.05, target="document", placebo_seed=1, placebo="heads")
    n_heads = int(tiny_model.cfg.n_heads)
    for p in (prompt, short_prompt):
        drawn = fake.heads_for(p, n_heads)
        assert drawn.keys() == config.keys() and drawn != config
        own = EmphasisSteering(drawn, alpha=0.05, target="document")
        torch.testing.assert_close(_logits(tiny_model, p, fake), _logits(tiny_model, p, own), atol=1e-5, rtol=1e-5)
    ids, mask = left_pad(tiny_model, [list(prompt.ids), list(short_prompt.ids)])
    with torch.inference_mode():
        batch = tiny_model.run_with_hooks(ids, attention_mask=mask,
                                          fwd_hooks=fake.hooks(tiny_model, prompts=[prompt, short_prompt]))
    alone = _logits(tiny_model, short_prompt, fake)
    torch.testing.assert_close(batch[1, -1], alone[0, -1], atol=1e-4, rtol=1e-4)


def test_calibration_placebo_shuffles_each_layers_weights():
    real, fake = PositionCalibration(_bias(8)), PositionCalibration(_bias(8), placebo_seed=1)
    ids = (0, 17, 23)
    for layer in range(N_LAYERS):
        assert sorted(fake.weights(layer, ids).tolist()) == sorted(real.weights(layer, ids).tolist())
    assert any(not torch.equal(fake.weights(l, ids), real.weights(l, ids)) for l in range(N_LAYERS))


def test_prompt_part_edits_need_prompts_and_a_matching_batch(tiny_model, prompt):
    with pytest.raises(ValueError, match="needs prompts"):
        EDITS["emphasis"].hooks(tiny_model)
    ids, mask = left_pad(tiny_model, [list(prompt.ids)] * 2)
    with pytest.raises(ValueError, match="1 prompts for a batch of 2"):
        with EDITS["calibration"].applied(tiny_model, prompts=[prompt]), torch.inference_mode():
            tiny_model(ids, attention_mask=mask)


def test_prompts_in_the_wrong_order_are_refused(tiny_model, prompt, short_prompt):
    ids, mask = left_pad(tiny_model, [list(prompt.ids), list(short_prompt.ids)])
    with pytest.raises(ValueError, match="not the prompt given for it"):
        with EDITS["emphasis"].applied(tiny_model, prompts=[short_prompt, prompt]), torch.inference_mode():
            tiny_model(ids, attention_mask=mask)


def test_emphasis_never_scales_keys_after_the_prompt(tiny_model, prompt):
    """Teacher forcing (prompt + continuation): on a steered head, continuation keys keep their
    weight relative to the emphasised span, as generated tokens do in PASTA."""
    cont = list(prompt.ids[10:30])
    tokens = torch.tensor([list(prompt.ids) + cont])
    seen = {}
    edit = EmphasisSteering({6: (1,)}, alpha=0.05)
    for key, pairs in (("base", []), ("steer", edit.hooks(tiny_model, prompts=[prompt]))):
        with torch.inference_mode():
            tiny_model.run_with_hooks(tokens, fwd_hooks=pairs + [(pattern_hook(6), _capture(seen, key))])
    start, end = prompt.parts["document"]
    ratio = seen["steer"][0, 1, -1] / seen["base"][0, 1, -1]
    torch.testing.assert_close(ratio[len(prompt):], ratio[start].expand(len(cont)), rtol=1e-4, atol=0)
    torch.testing.assert_close(ratio[end : len(prompt)] / ratio[start], torch.full((len(prompt) - end,), 0.05),
                               rtol=1e-3, atol=0)


def test_calibration_edits_every_decode_step(tiny_model, prompt):
    """A KV-cache decode step's single row (past the document) is calibrated like a prompt row."""
    edit = PositionCalibration(_bias(), strength=1.0, layers=(6,))
    seen = []

    def grab(pattern, *, hook):
        if pattern.shape[-2] == 1:
            seen.append(pattern.detach().clone())

    kw = dict(max_new_tokens=3, do_sample=False, verbose=False, stop_at_eos=False, use_past_kv_cache=True)
    with torch.inference_mode():
        with tiny_model.hooks(fwd_hooks=[(pattern_hook(6), grab)]):
            plain = tiny_model.generate(prompt.tensor(), **kw)
        base_steps, seen[:] = list(seen), []
        with tiny_model.hooks(fwd_hooks=edit.hooks(tiny_model, prompts=[prompt]) + [(pattern_hook(6), grab)]):
            tiny_model.generate(prompt.tensor(), **kw)
    # layers below 6 are unedited, so the first decode step's layer-6 scores match whenever the
    # first generated token does (it does here: the generated tokens are compared below)
    first = base_steps[0].clone()
    calibrate_rows_(first, prompt.document, edit.weights(6, prompt.ids), first_row=0)
    torch.testing.assert_close(seen[0], first, atol=1e-6, rtol=0)
    assert not torch.equal(seen[0], base_steps[0]) and plain.shape[1] == len(prompt) + 3


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: AttentionTemperature(tau=0), "tau"),
        (lambda: EmphasisSteering({}, alpha=0.01), "head_config"),
        (lambda: EmphasisSteering({1: (0,)}, alpha=0), "alpha"),
        (lambda: EmphasisSteering({1: (0,)}, target="summary"), "target"),
        (lambda: PositionCalibration(_bias(), strength=-1), "strength"),
        (lambda: AttentionTemperature(layers="12"), "layers"),
    ],
)
def test_bad_parameters_are_refused_by_name(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    "edit, match",
    [
        (AttentionTemperature(layers=(8,)), "layers"),
        (AttentionTemperature(heads=(4,)), "head"),
        (EmphasisSteering({9: (0,)}), "outside the model"),
        (PositionCalibration(PositionBias(((1.0, 1.0),) * 3, 1)), "3 layers"),
    ],
)
def test_selection_outside_the_model_is_refused(tiny_model, prompt, edit, match):
    with pytest.raises(ValueError, match=match):
        edit.hooks(tiny_model, prompts=[prompt])


def test_head_profiling_replay_equals_a_full_steered_pass(tiny_model, prompt):
    """``profile_heads`` replays blocks from the steered layer on: it must equal running the
    whole model with that head steered, and differ between heads."""
    from at_probe.interventions.emphasis import profile_heads

    reference = list(prompt.ids[5:25])
    deltas = profile_heads(tiny_model, prompt, reference, alpha=0.01)
    assert len(deltas) == 8 * 4
    tokens = torch.tensor([list(prompt.ids) + reference])
    t = len(prompt)

    def nll(edit):
        hooks = [] if edit is None else edit.hooks(tiny_model, prompts=[prompt])
        with torch.inference_mode():
            logits = tiny_model.run_with_hooks(tokens, fwd_hooks=hooks)
        logp = logits[0, t - 1 : -1].log_softmax(-1)
        return float(-logp.gather(-1, tokens[0, t:, None]).mean())

    base = nll(None)
    for layer, head in ((0, 1), (5, 2), (7, 3)):
        full = nll(EmphasisSteering({layer: (head,)}, alpha=0.01)) - base
        assert deltas[(layer, head)] == pytest.approx(full, abs=1e-5)
    assert len({round(d, 6) for d in deltas.values()}) > 20
