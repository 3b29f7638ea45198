"""FlowProbe on the tiny model against a run_with_cache oracle, and with the transition."""

from __future__ import annotations

import pytest
import torch

from at_probe.flow import ops
from at_probe.models.names import pattern_hook
from at_probe.flow.probe import FlowProbe, FlowResult
from at_probe.interventions.transition import PaperTransition


@pytest.fixture(scope="module")
def tokens(tiny_model, sample_text):
    return tiny_model.to_tokens(sample_text)[:, :450]


def test_probe_matches_full_pattern_oracle(tiny_model, tokens, tmp_path):
    """Each reduction equals the same reduction of the cached full patterns."""
    n_layers = tiny_model.cfg.n_layers
    probe = FlowProbe.for_model(tiny_model, regions=6, rollout=True, keep_maps=True)
    with probe.attached(tiny_model), torch.inference_mode():
        _, cache = tiny_model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    res = probe.result(doc="sample")
    bounds = ops.region_bounds(tokens.shape[1], 6)
    assert torch.equal(res.region_bounds, bounds)
    joint = None
    for l in range(n_layers):
        pats = cache[pattern_hook(l)][0].float()
        for h in range(pats.shape[0]):
            km = ops.key_region_mass(pats[h], bounds)
            torch.testing.assert_close(res.final_token_profile[l, h], km[-1])
            torch.testing.assert_close(res.region_mass[l, h], ops.region_to_region(km, bounds))
            torch.testing.assert_close(res.entropy[l, h], ops.row_entropy(pats[h]))
            torch.testing.assert_close(res.sink_mass[l, h], ops.sink_mass(pats[h]))
            torch.testing.assert_close(res.distance[l, h], ops.attention_distance(pats[h]))
        torch.testing.assert_close(res.maps[l], pats.mean(0), atol=1e-6, rtol=1e-5)
        joint = ops.rollout_step(joint, pats.mean(0))
        torch.testing.assert_close(res.rollout[l], ops.key_region_mass(joint[-1:], bounds)[0],
                                   atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(res.final_token_profile.sum(-1), torch.ones(n_layers, tiny_model.cfg.n_heads))
    res.save(tmp_path / "r.json")
    back = FlowResult.load(tmp_path / "r.json")
    torch.testing.assert_close(back.region_mass, res.region_mass)
    assert back.meta == {"doc": "sample"}
    frame = res.to_frame()
    assert set(frame.measure) == {"sink_mass", "entropy", "distance", "final_token_profile", "region_mass", "rollout"}


def test_probe_sees_the_edited_pattern_after_the_transition(tiny_model, tokens):
    tr = PaperTransition(alpha=1.0, beta=1.5)
    after, before = FlowProbe.for_model(tiny_model, regions=6), FlowProbe.for_model(tiny_model, regions=6)
    with torch.inference_mode():
        tiny_model.run_with_hooks(tokens, fwd_hooks=before.hooks() + tr.hooks(tiny_model) + after.hooks())
    edited = tr.last_report().layers
    layer = min(edited)
    # Same input to the first edited layer: its "before" view is unedited, its "after" view is edited.
    assert not torch.allclose(after.result().region_mass[layer], before.result().region_mass[layer])
    assert torch.allclose(after.result().region_mass[0], before.result().region_mass[0])


def test_probe_ignores_decode_steps_and_refuses_batches(tiny_model, tokens):
    probe = FlowProbe.for_model(tiny_model, regions=4)
    with probe.attached(tiny_model), torch.inference_mode():
        tiny_model.generate(tokens, max_new_tokens=3, do_sample=False, verbose=False)
    assert probe.result().region_bounds[-1] == tokens.shape[1]
    with pytest.raises(ValueError, match="one sequence"):
        with FlowProbe.for_model(tiny_model).attached(tiny_model), torch.inference_mode():
            tiny_model(tokens.repeat(2, 1))
    with pytest.raises(RuntimeError):
        FlowProbe.for_model(tiny_model).result()


def _assert_same_result(got: FlowResult, expected: FlowResult) -> None:
    assert got.region_labels == expected.region_labels
    for name in ("region_bounds", "region_mass", "final_token_profile", "sink_mass", "entropy", "distance",
                 "rollout", "final_token_value_profile"):
        torch.testing.assert_close(getattr(got, name), getattr(expected, name), msg=name)


def _probe(model) -> FlowProbe:
    return FlowProbe.for_model(model, regions=4, rollout=True, value_weighted=True)


def test_a_second_pass_replaces_the_first_capture(tiny_model, tokens):
    """Two prompts through one probe, no reset(): result() describes the second, exactly as a
    fresh probe does (raw, value-weighted and rollout measures), never the first."""
    first, second = tokens[:, :120], tokens[:, 200:290]
    reused, fresh = _probe(tiny_model), _probe(tiny_model)
    with torch.inference_mode():
        with reused.attached(tiny_model):
            tiny_model(first)
            tiny_model(second)
        with fresh.attached(tiny_model):
            tiny_model(second)
    _assert_same_result(reused.result(), fresh.result())


def test_a_pass_that_failed_in_its_first_layer_leaves_nothing_behind(tiny_model, tokens):
    """A pass whose first pattern raised (here: its values were not hooked) captured no layer:
    the next pass, longer, starts afresh (its own regions), equal to a fresh probe's."""
    failed, fresh = _probe(tiny_model), _probe(tiny_model)
    patterns_only = [(name, fn) for name, fn in failed.hooks() if "hook_pattern" in name]
    with torch.inference_mode():
        with pytest.raises(RuntimeError, match="without the values"):
            tiny_model.run_with_hooks(tokens[:, :100], fwd_hooks=patterns_only)
        with failed.attached(tiny_model):
            tiny_model(tokens[:, :300])
        with fresh.attached(tiny_model):
            tiny_model(tokens[:, :300])
    _assert_same_result(failed.result(), fresh.result())


def test_a_pass_mixing_with_a_partial_capture_raises(tiny_model, tokens):
    """A pattern that would join a partial capture raises, and result() raises until reset()."""
    probe, prompt = _probe(tiny_model), tokens[:, :80]
    with torch.inference_mode(), pytest.raises(RuntimeError, match="partial capture of layers 0-0"):
        tiny_model.run_with_hooks(prompt, fwd_hooks=probe.hooks() + probe.hooks())  # each layer seen twice
    with pytest.raises(RuntimeError, match="would mix"):
        probe.result()

    class Interrupted(Exception):
        pass

    def interrupt(pattern, *, hook):
        raise Interrupted

    probe.reset()
    with torch.inference_mode():  # a pass stopped at layer 3, then a full one: layers 0-2 would mix
        with pytest.raises(Interrupted):
            tiny_model.run_with_hooks(prompt, fwd_hooks=probe.hooks() + [(pattern_hook(3), interrupt)])
        with pytest.raises(RuntimeError, match="partial capture of layers 0-3"):
            tiny_model.run_with_hooks(prompt, fwd_hooks=probe.hooks())
    with pytest.raises(RuntimeError, match="would mix"):
        probe.result()
    probe.reset()
    with probe.attached(tiny_model), torch.inference_mode():
        tiny_model(prompt)
    fresh = _probe(tiny_model)
    with fresh.attached(tiny_model), torch.inference_mode():
        tiny_model(prompt)
    _assert_same_result(probe.result(), fresh.result())
    patterns_only = [pair for pair in _probe(tiny_model).hooks() if pair[0].endswith("hook_pattern")]
    with torch.inference_mode(), pytest.raises(RuntimeError, match="without the values"):
        tiny_model.run_with_hooks(prompt, fwd_hooks=patterns_only)  # value-weighted, no hook_v


def test_generate_with_the_probe_attached_describes_each_prompt(tiny_model, tokens):
    """Decode steps are ignored: after generate, the probe holds its prompt's prefill (values
    included); a second generate on another prompt replaces it."""
    prompts = tokens[:, :100], tokens[:, 150:220]
    probe = _probe(tiny_model)
    for prompt in prompts:
        with probe.attached(tiny_model), torch.inference_mode():
            out = tiny_model.generate(prompt, max_new_tokens=3, do_sample=False, verbose=False)
        assert out.shape[1] == prompt.shape[1] + 3
        fresh = _probe(tiny_model)
        with fresh.attached(tiny_model), torch.inference_mode():
            tiny_model(prompt)
        _assert_same_result(probe.result(), fresh.result())


def test_knockout_of_unattended_region_changes_nothing(tiny_model, tokens):
    """If no row attends to a region, knocking it out leaves the logits as they are."""
    from at_probe.flow.knockout import knockout_hooks

    layers = range(tiny_model.cfg.n_layers)
    silence = knockout_hooks(100, 150, layers)  # nobody attends to tokens 100..149 any more
    with torch.inference_mode():
        silenced = tiny_model.run_with_hooks(tokens, fwd_hooks=silence)
        again = tiny_model.run_with_hooks(tokens, fwd_hooks=silence + knockout_hooks(100, 150, layers))
        plain = tiny_model(tokens)
    torch.testing.assert_close(again, silenced, atol=1e-5, rtol=1e-5)
    assert (silenced - plain).abs().max() > 1e-3  # the region did matter before


def test_knockout_sweep_tracks_where_the_final_token_reads(tiny_model, tokens):
    """The most-attended region's knockout moves the next-token distribution far more than the least."""
    from at_probe.flow.knockout import knockout_sweep

    probe = FlowProbe.for_model(tiny_model, regions=6)
    with probe.attached(tiny_model), torch.inference_mode():
        tiny_model(tokens)
    flow = probe.result()
    res = knockout_sweep(tiny_model, tokens, flow.region_bounds, band_size=tiny_model.cfg.n_layers,
                         progress=False)
    reads = flow.final_token_profile.mean(dim=(0, 1))  # mean over layers and heads, per region
    kl = res.kl[0]
    assert kl.shape == reads.shape and (kl >= -1e-6).all()
    assert kl[reads.argmax()] > 10 * kl[reads.argmin()]


def test_value_weighted_profile_matches_an_oracle(tiny_model, tokens):
    """value_weighted=True: per head and key region, sum_j a_ij ||v_j W_O^h|| for the last token,
    from hook_v inside the pass, equals the same computed from cached patterns and values."""
    probe = FlowProbe.for_model(tiny_model, regions=5, value_weighted=True)
    with probe.attached(tiny_model), torch.inference_mode():
        _, cache = tiny_model.run_with_cache(tokens, names_filter=lambda n: n.endswith(("hook_pattern", "hook_v")))
    res = probe.result()
    n_heads, n_kv = tiny_model.cfg.n_heads, tiny_model.cfg.n_key_value_heads
    assert n_kv < n_heads, "the tiny model uses grouped-query attention"
    for l in range(tiny_model.cfg.n_layers):
        pattern, values = cache[pattern_hook(l)][0], cache[f"blocks.{l}.attn.hook_v"][0]
        w_o = tiny_model.blocks[l].attn.W_O.detach()
        for h in range(n_heads):
            out = pattern[h, -1, :, None] * (values[:, h // (n_heads // n_kv), :] @ w_o[h])  # [key, d_model]
            expected = ops.key_region_mass(out.norm(dim=-1)[None], res.region_bounds)[0]
            torch.testing.assert_close(res.final_token_value_profile[l, h], expected, rtol=1e-4, atol=1e-5)
    assert res.final_token_value_profile.shape == res.final_token_profile.shape


@pytest.mark.parametrize("kind", ["paper", "placebo"])
def test_knockout_resumed_from_the_cached_residual_equals_a_full_recompute(tiny_model, tokens, kind):
    """Each knockout pass resumes from the residual entering its band; the KL and NLL changes
    equal those of passes recomputed from the tokens, with a transition active and a reference
    (the placebo too, whose per-document draws need the prompt's ids in the replayed passes)."""
    from at_probe.flow.knockout import knockout_hooks, knockout_sweep
    from at_probe.interventions.transition import PaperTransition, PlaceboTransition

    tr = (PaperTransition if kind == "paper" else PlaceboTransition)(alpha=1.0, beta=0.5)
    prompt, reference = tokens[:, :440], tokens[:, 440:460]
    bounds = ops.region_bounds(prompt.shape[1], 3)
    res = knockout_sweep(tiny_model, prompt, bounds, band_size=3, reference=reference, transition=tr,
                         progress=False)
    assert [b[0] for b in res.bands] == [0, 3, 6]
    full = torch.cat((prompt, reference), dim=1)
    t = prompt.shape[1]

    def scored(extra):
        with torch.inference_mode():
            logp = tiny_model.run_with_hooks(full, fwd_hooks=tr.hooks(tiny_model, prompt_lengths=t) + extra)[0]
        logp = logp.float().log_softmax(-1)
        return logp[t - 1], -logp[t - 1 : -1].gather(-1, full[0, t:, None]).mean()

    base_logp, base_nll = scored([])
    for i, (start, end) in enumerate(res.bands):
        for j in range(len(res.region_labels)):
            lo, hi = (min(int(x), t - 1) for x in bounds[j : j + 2])
            logp, nll = scored(knockout_hooks(lo, hi, range(start, end)))
            kl = (base_logp.exp() * (base_logp - logp)).sum()
            torch.testing.assert_close(res.kl[i, j], kl, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(res.nll_delta[i, j], nll - base_nll, atol=1e-5, rtol=1e-4)
    assert res.kl.max() > 1e-3


def test_attribution_estimate_is_the_exact_first_order_change(tiny_model, tokens):
    """Each estimate equals d/de NLL(A + e * dA) at e = 0 (autograd through an e-scaled knockout
    in that band), with a transition active; the model's parameters are left as they were."""
    from at_probe.flow.attribution import attribution_sweep
    from at_probe.interventions.transition import PaperTransition

    tr = PaperTransition(alpha=1.0, beta=0.5)
    prompt, reference = tokens[:, :440], tokens[:, 440:460]
    t = prompt.shape[1]
    bounds = ops.region_bounds(t, 3)
    est = attribution_sweep(tiny_model, prompt, bounds, band_size=4, reference=reference, transition=tr)
    assert all(p.requires_grad for p in tiny_model.parameters())
    assert est.kl is None and est.to_dict()["kl"] is None and est.nll_delta.shape == (2, 4)
    full = torch.cat((prompt, reference), dim=1)
    edges = [min(int(x), t - 1) for x in bounds]
    for i, (start, end) in enumerate(est.bands):
        for j in (1, 3):
            eps = torch.zeros((), requires_grad=True)

            def scaled(pattern, *, hook, lo=edges[j], hi=edges[j + 1]):
                return pattern + eps * (ops.knockout(pattern.detach(), lo, hi) - pattern.detach())

            pairs = tr.hooks(tiny_model, prompt_lengths=t) + [(pattern_hook(l), scaled) for l in range(start, end)]
            logp = tiny_model.run_with_hooks(full, fwd_hooks=pairs)[0].float().log_softmax(-1)
            nll = -logp[t - 1 : -1].gather(-1, full[0, t:, None]).mean()
            (slope,) = torch.autograd.grad(nll, eps)
            torch.testing.assert_close(est.nll_delta[i, j], slope, atol=2e-5, rtol=1e-3)
    assert est.nll_delta.abs().max() > 1e-3
