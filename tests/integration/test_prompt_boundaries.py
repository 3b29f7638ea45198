"""One hook set, several passes: each pass and each ``generate`` call is a prompt of its own
unless it continues one generation (issue #20, item 4), the same rule for every intervention.

Before the fix a pass whose tokens extended the previous pass's was taken for a cache-less
decode step: the paper version then edited the second prompt with the first's schedule."""

from __future__ import annotations

import warnings

import pytest
import torch

from at_probe.interventions.emphasis import EmphasisSteering
from at_probe.interventions.base import GENERATION_METHODS, generating
from at_probe.models.prompts import build_prompt
from at_probe.interventions.temperature import AttentionTemperature
from at_probe.interventions.transition import PaperTransition, SRATransition, paper_interval

SRA_SMALL = dict(begin_length=5, threshold_len=50, elimi_factor_inter=0.5, elimi_factor_outer=0.5,
                 strengthen_factor_inter=5, strengthen_factor_outer=5)

EDITS = {
    "paper": lambda: PaperTransition(alpha=1.0, beta=0.5),
    "sra": lambda: SRATransition(**SRA_SMALL),
    "temperature": lambda: AttentionTemperature(tau=3.0, layers=(3, 6)),
    "emphasis": lambda: EmphasisSteering({l: tuple(range(4)) for l in range(2, 8)}, alpha=0.01),
}
NEEDS_PROMPTS = {"emphasis"}


@pytest.fixture(scope="module")
def prompt(tiny_model, sample_text):
    """The sample document's whole prompt (792 tokens on the tiny model)."""
    p = build_prompt(tiny_model.tokenizer, sample_text)
    assert len(p) > 700
    return p


@pytest.fixture(scope="module")
def short_prompt(tiny_model, sample_text):
    """A prompt of at most 535 tokens: long enough for the paper version (400)."""
    p = build_prompt(tiny_model.tokenizer, sample_text, max_tokens=535)
    assert 520 <= len(p) <= 535
    return p


def _kwargs(name, prompt):
    return {"prompts": [prompt]} if name in NEEDS_PROMPTS else {}


@pytest.mark.parametrize("registered", ["applied", "by_hand"])
@pytest.mark.parametrize("name", list(EDITS))
def test_a_pass_that_extends_the_previous_one_is_a_new_prompt(tiny_model, prompt, short_prompt, name,
                                                              registered):
    """Two forward passes in one block, the second's tokens extending the first's (the first
    500 tokens, then the whole prompt): the second equals a fresh hook set's pass, logits and
    report. The edits needing prompts get the first pass's prompt; their second pass is that
    prompt plus continuation tokens (teacher forcing)."""
    if name in NEEDS_PROMPTS:
        anchor = short_prompt
        first = short_prompt.tensor()
        second = torch.tensor([list(short_prompt.ids) + list(prompt.ids[:200])])
    else:
        anchor = None
        first, second = prompt.tensor()[:, :500], prompt.tensor()
    kw = _kwargs(name, anchor)
    edit = EDITS[name]()
    with torch.inference_mode():
        if registered == "applied":
            with edit.applied(tiny_model, **kw):
                tiny_model(first)
                both = tiny_model(second)
        else:
            with tiny_model.hooks(fwd_hooks=edit.hooks(tiny_model, **kw)):
                tiny_model(first)
                both = tiny_model(second)
        report = edit.last_report()
        fresh = EDITS[name]()
        alone = tiny_model.run_with_hooks(second, fwd_hooks=fresh.hooks(tiny_model, **kw))
    assert torch.equal(both, alone)
    assert report == fresh.last_report()
    assert report.layers, "the edit must act on this prompt"


def test_the_paper_schedule_of_the_issue_example(tiny_model, prompt):
    """The issue's example on the tiny model: after a 500-token pass, the 792-token prompt is
    edited with its own schedule (layer 1: interval 85), not the 500-token one (interval 55)."""
    tr = PaperTransition(alpha=1.0, beta=0.5)
    with tr.applied(tiny_model), torch.inference_mode():
        tiny_model(prompt.tensor()[:, :500])
        tiny_model(prompt.tensor())
    assert tr.last_report().layers[1].spans == [[(170, 255), (255, 340)]]


@pytest.mark.parametrize("cache", [True, False], ids=["cached", "uncached"])
@pytest.mark.parametrize("name", list(EDITS))
def test_a_second_generate_call_is_a_new_prompt(tiny_model, short_prompt, name, cache):
    """Two ``generate`` calls in one block, the second starting with the first's output: the
    second equals a fresh block's call (tokens and report), with and without the KV cache."""
    kw = _kwargs(name, short_prompt)
    gen = dict(do_sample=False, verbose=False, stop_at_eos=False, use_past_kv_cache=cache)
    edit = EDITS[name]()
    with torch.inference_mode():
        with edit.applied(tiny_model, **kw):
            out = tiny_model.generate(short_prompt.tensor(), max_new_tokens=12, **gen)
            again = tiny_model.generate(out, max_new_tokens=4, **gen)
        report = edit.last_report()
        fresh = EDITS[name]()
        with fresh.applied(tiny_model, **kw):
            alone = tiny_model.generate(out, max_new_tokens=4, **gen)
    # the paper schedule of the first call's output differs from its prompt's
    assert paper_interval(out.shape[1], 8, 2) != paper_interval(len(short_prompt), 8, 2)
    assert torch.equal(again, alone)
    assert report == fresh.last_report()
    assert report.layers, "the edit must act on this prompt"


def test_a_fresh_one_token_pass_is_a_new_prompt(tiny_model, prompt):
    """A one-token pass without a KV cache is not a decode step of the previous prompt: its
    report is a fresh hook set's, and an edit given prompts checks it against them (and refuses
    it, as a fresh hook set does) instead of editing it as a generated token of the prompt."""
    edit = EDITS["temperature"]()
    one = prompt.tensor()[:, :1]
    with torch.inference_mode():
        with edit.applied(tiny_model):
            tiny_model(prompt.tensor())
            both = tiny_model(one)
        report = edit.last_report()
        fresh = EDITS["temperature"]()
        alone = tiny_model.run_with_hooks(one, fwd_hooks=fresh.hooks(tiny_model))
        assert torch.equal(both, alone)
        assert report == fresh.last_report()
        steer = EDITS["emphasis"]()
        with steer.applied(tiny_model, prompts=[prompt]):
            tiny_model(prompt.tensor())
            with pytest.raises(ValueError, match="not the prompt given"):
                tiny_model(one)
        with pytest.raises(ValueError, match="not the prompt given"):
            tiny_model.run_with_hooks(one, fwd_hooks=EDITS["emphasis"]().hooks(tiny_model, prompts=[prompt]))


def test_uncached_generation_by_hand_without_generating_warns(tiny_model, short_prompt):
    """Hooks registered by hand cannot tell the steps of ``generate(..., use_past_kv_cache=
    False)`` from new prompts without ``generating(model)``: they say so."""
    tr = PaperTransition(alpha=1.0, beta=0.5)
    gen = dict(max_new_tokens=2, do_sample=False, verbose=False, stop_at_eos=False, use_past_kv_cache=False)
    with torch.inference_mode():
        with pytest.warns(UserWarning, match="generating"):
            with tiny_model.hooks(fwd_hooks=tr.hooks(tiny_model)):
                tiny_model.generate(short_prompt.tensor(), **gen)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with tiny_model.hooks(fwd_hooks=tr.hooks(tiny_model)), generating(tiny_model):
                tiny_model.generate(short_prompt.tensor(), **gen)


def test_applied_restores_the_generation_methods(tiny_model):
    """``applied`` shadows the generation methods for its block only (nested blocks, and a
    body that raises, included)."""
    before = {name: getattr(tiny_model, name) for name in GENERATION_METHODS}
    outer, inner = AttentionTemperature(tau=2.0, layers=(1,)), AttentionTemperature(tau=2.0, layers=(2,))
    with pytest.raises(RuntimeError, match="boom"):
        with outer.applied(tiny_model):
            with inner.applied(tiny_model):
                assert all(name in vars(tiny_model) for name in GENERATION_METHODS)
            assert all(name in vars(tiny_model) for name in GENERATION_METHODS)
            raise RuntimeError("boom")
    assert not any(name in vars(tiny_model) for name in GENERATION_METHODS)
    assert {name: getattr(tiny_model, name) for name in GENERATION_METHODS} == before
