"""The transition as live hooks on the tiny model: exact, scoped, batch- and cache-safe."""

from __future__ import annotations

import warnings

import pytest
import torch

from at_probe.names import pattern_hook
from at_probe.transition import (
    PaperTransition,
    PlaceboTransition,
    SRATransition,
    dispense,
    paper_schedule,
    sra_layer,
)

SRA_SMALL = dict(begin_length=5, threshold_len=50, elimi_factor_inter=0.5, elimi_factor_outer=0.5,
                 strengthen_factor_inter=5, strengthen_factor_outer=5)


@pytest.fixture(scope="module")
def tokens(tiny_model, sample_text):
    toks = tiny_model.to_tokens(sample_text)
    assert toks.shape[1] >= 600
    return toks


@pytest.fixture(scope="module")
def baseline(tiny_model, tokens):
    with torch.inference_mode():
        return tiny_model(tokens)


def _capture(store: dict, key: str):
    def fn(pattern, *, hook):
        store[key] = pattern.detach().clone()
    return fn


def test_hook_edit_equals_pure_function(tiny_model, tokens):
    """At an edited layer, the pattern after the hook is dispense() of the pattern before it."""
    layer = 3
    tr = PaperTransition(alpha=1.0, beta=0.5, layers=(layer,))
    seen: dict = {}
    name = pattern_hook(layer)
    pairs = [(name, _capture(seen, "before"))] + tr.hooks(tiny_model) + [(name, _capture(seen, "after"))]
    with torch.inference_mode():
        tiny_model.run_with_hooks(tokens, fwd_hooks=pairs)
    spans = paper_schedule(tokens.shape[1], tiny_model.cfg.n_layers, 2)[layer]
    torch.testing.assert_close(seen["after"], dispense(seen["before"], spans, 1.0, 0.5))
    assert tr.last_report().layers[layer].spans == [spans]


def test_sra_hook_edit_equals_pure_function(tiny_model, tokens):
    layer = 4
    tr = SRATransition(**SRA_SMALL, layers=(layer,))
    seen: dict = {}
    name = pattern_hook(layer)
    pairs = [(name, _capture(seen, "before"))] + tr.hooks(tiny_model) + [(name, _capture(seen, "after"))]
    with torch.inference_mode():
        tiny_model.run_with_hooks(tokens, fwd_hooks=pairs)
    expected = sra_layer(seen["before"], layer, tiny_model.cfg.n_layers, **SRA_SMALL)
    torch.testing.assert_close(seen["after"], expected)
    assert not torch.equal(seen["after"], seen["before"])


@pytest.mark.parametrize(
    "transition",
    [PaperTransition(alpha=1.0, beta=0.5), SRATransition(**SRA_SMALL), PlaceboTransition(alpha=1.0, beta=0.5)],
    ids=["paper", "sra", "placebo"],
)
def test_transition_changes_output_and_is_removed(tiny_model, tokens, baseline, transition):
    with transition.applied(tiny_model), torch.inference_mode():
        edited = tiny_model(tokens)
    assert (edited - baseline).abs().max() > 1e-3
    with torch.inference_mode():
        assert torch.equal(tiny_model(tokens), baseline), "hooks must be gone after the block"


def test_paper_report_shows_mass_not_conserved(tiny_model, tokens):
    tr = PaperTransition(alpha=1.0, beta=1.5)
    with tr.applied(tiny_model), torch.inference_mode():
        tiny_model(tokens)
    report = tr.last_report()
    assert sorted(report.layers) == list(range(1, tiny_model.cfg.n_layers - 2))
    assert max(r.row_sum_max for r in report.layers.values()) > 1.05
    assert all(r.rows_touched > 0 and r.freed_mass_mean >= 0 for r in report.layers.values())
    assert len(report.to_frame()) == len(report.layers)


def test_placebo_matches_paper_rows_and_added_mass(tiny_model, tokens):
    layer = 2
    paper, placebo = PaperTransition(alpha=1.0, beta=0.5, layers=(layer,)), PlaceboTransition(
        alpha=1.0, beta=0.5, layers=(layer,), seed=3)
    for tr in (paper, placebo):
        with tr.applied(tiny_model), torch.inference_mode():
            tiny_model(tokens)
    a, b = paper.last_report().layers[layer], placebo.last_report().layers[layer]
    assert a.rows_touched == b.rows_touched and a.spans == b.spans
    assert a.added_mass_mean == pytest.approx(b.added_mass_mean, rel=1e-4)
    assert a.freed_mass_mean == pytest.approx(b.freed_mass_mean, rel=1e-4)


def test_hooks_removed_after_exception(tiny_model, tokens, baseline):
    tr = PaperTransition(alpha=1.0, beta=0.5)
    with pytest.raises(RuntimeError, match="boom"):
        with tr.applied(tiny_model):
            raise RuntimeError("boom")
    with torch.inference_mode():
        assert torch.equal(tiny_model(tokens), baseline)


def test_short_prompt_is_noop_with_one_warning(tiny_model, tokens, baseline):
    short = tokens[:, :300]
    with torch.inference_mode():
        plain = tiny_model(short)
    tr = PaperTransition()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with tr.applied(tiny_model), torch.inference_mode():
            out = tiny_model(short)
    assert torch.equal(out, plain)
    relevant = [w for w in caught if "shorter than 400" in str(w.message)]
    assert len(relevant) == 1
    assert tr.last_report().layers == {}


def test_head_subset_only_touches_those_heads(tiny_model, tokens):
    layer = 3
    tr = PaperTransition(alpha=1.0, beta=0.5, layers=(layer,), heads=(1,))
    seen: dict = {}
    name = pattern_hook(layer)
    pairs = [(name, _capture(seen, "before"))] + tr.hooks(tiny_model) + [(name, _capture(seen, "after"))]
    with torch.inference_mode():
        tiny_model.run_with_hooks(tokens, fwd_hooks=pairs)
    changed = (seen["after"] != seen["before"]).flatten(2).any(-1)[0]
    assert changed.tolist() == [h == 1 for h in range(tiny_model.cfg.n_heads)]


@pytest.mark.parametrize(
    "transition",
    [PaperTransition(layers=(0,)), PaperTransition(layers=(7,)), PaperTransition(heads=(9,)),
     SRATransition(layers=(7,))],
    ids=["paper-layer0", "paper-last", "bad-head", "sra-last"],
)
def test_out_of_range_layers_or_heads_raise_when_applied(tiny_model, transition):
    with pytest.raises(ValueError):
        with transition.applied(tiny_model):
            pass


@pytest.mark.parametrize(
    "transition", [PaperTransition(alpha=1.0, beta=0.5), SRATransition(**SRA_SMALL)], ids=["paper", "sra"]
)
def test_left_padded_batch_equals_alone(tiny_model, sample_text, transition):
    """Each sequence uses its own length, sink column and offsets under left padding."""
    tok = tiny_model.tokenizer
    texts = [sample_text, sample_text[: len(sample_text) * 3 // 4]]
    enc = tok(texts, padding=True, return_tensors="pt")
    pad = int((enc["attention_mask"][1] == 0).sum())
    assert pad > 50
    with transition.applied(tiny_model), torch.inference_mode():
        batch = tiny_model(enc["input_ids"], attention_mask=enc["attention_mask"])
    batch_spans = {l: r.spans for l, r in transition.last_report().layers.items()}
    for row, text in enumerate(texts):
        alone_tokens = tok(text, return_tensors="pt")["input_ids"]
        with transition.applied(tiny_model), torch.inference_mode():
            alone = tiny_model(alone_tokens)
        offset = pad if row == 1 else 0
        torch.testing.assert_close(batch[row, offset:], alone[0], atol=1e-4, rtol=1e-4)
        for layer, report in transition.last_report().layers.items():
            assert batch_spans[layer][row] == report.spans[0]


@pytest.mark.parametrize(
    "transition", [PaperTransition(alpha=1.0, beta=0.5), SRATransition(**SRA_SMALL)], ids=["paper", "sra"]
)
def test_generation_cached_equals_uncached(tiny_model, tokens, transition):
    """Only prompt rows are edited, at prefill: the KV cache changes nothing.

    Without the cache every step re-runs the whole sequence; the report must still show the
    prompt's own schedule (generated rows never edited), identical to the cached run's.
    """
    # 535 tokens: interval 55 for 8 layers and K=2; from 540 tokens on it would be 60, so a
    # schedule recomputed on prompt + generated tokens would show up in the report.
    prompt = tokens[:, :535]
    kw = dict(max_new_tokens=16, do_sample=False, verbose=False, stop_at_eos=False)
    with torch.inference_mode():
        with transition.applied(tiny_model):
            cached = tiny_model.generate(prompt, use_past_kv_cache=True, **kw)
        cached_report = transition.last_report()
        with transition.applied(tiny_model):
            uncached = tiny_model.generate(prompt, use_past_kv_cache=False, **kw)
        uncached_report = transition.last_report()
    assert torch.equal(cached, uncached)
    assert cached_report.layers, "the transition must have edited the prompt at prefill"
    assert {l: r.spans for l, r in cached_report.layers.items()} == {
        l: r.spans for l, r in uncached_report.layers.items()}
    assert {l: r.rows_touched for l, r in cached_report.layers.items()} == {
        l: r.rows_touched for l, r in uncached_report.layers.items()}


def test_prompt_lengths_protect_continuation_rows(tiny_model, tokens):
    """Teacher forcing: with prompt_lengths, the rows after the prompt are never edited."""
    prompt_len = 500
    tr = PaperTransition(alpha=1.0, beta=0.5)
    with tr.applied(tiny_model), torch.inference_mode():
        prompt_only = tiny_model(tokens[:, :prompt_len])
    with tr.applied(tiny_model, prompt_lengths=prompt_len), torch.inference_mode():
        full = tiny_model(tokens)
    torch.testing.assert_close(full[:, :prompt_len], prompt_only, atol=1e-4, rtol=1e-4)


def test_new_prompt_in_same_context_gets_its_own_schedule(tiny_model, tokens):
    """A later, different prompt inside one applied() block is not mistaken for a continuation."""
    tr = PaperTransition(alpha=1.0, beta=0.5)
    other = tokens.flip(-1)[:, :650]
    with torch.inference_mode():
        with tr.applied(tiny_model):
            tiny_model(tokens[:, :450])
            first = tiny_model(other)
        with tr.applied(tiny_model):
            second = tiny_model(other)
    torch.testing.assert_close(first, second)
