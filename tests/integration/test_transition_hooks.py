"""The transition as live hooks on the tiny model: exact, scoped, batch- and cache-safe."""

from __future__ import annotations

import warnings

import pytest
import torch

from at_probe.interventions.base import generating
from at_probe.models.names import pattern_hook
from at_probe.interventions.transition import (
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


@pytest.mark.parametrize("parts", [None, ("prune",), ("sink",), ("move",), ("prune", "move")],
                         ids=lambda p: "full" if p is None else "+".join(p))
def test_hook_edit_equals_pure_function(tiny_model, tokens, parts):
    """At an edited layer, the pattern after the hook is dispense() of the pattern before it
    (the paper version, and its parts taken apart)."""
    layer = 3
    tr = PaperTransition(alpha=1.0, beta=0.5, layers=(layer,), parts=parts)
    seen: dict = {}
    name = pattern_hook(layer)
    pairs = [(name, _capture(seen, "before"))] + tr.hooks(tiny_model) + [(name, _capture(seen, "after"))]
    with torch.inference_mode():
        tiny_model.run_with_hooks(tokens, fwd_hooks=pairs)
    spans = paper_schedule(tokens.shape[1], tiny_model.cfg.n_layers, 2)[layer]
    torch.testing.assert_close(seen["after"], dispense(seen["before"], spans, 1.0, 0.5, parts=parts))
    assert not torch.equal(seen["after"], seen["before"])
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
    [PaperTransition(alpha=1.0, beta=0.5), SRATransition(**SRA_SMALL), PlaceboTransition(alpha=1.0, beta=0.5),
     *(PaperTransition(alpha=1.0, beta=0.5, parts=(part,)) for part in ("prune", "sink", "move"))],
    ids=["paper", "sra", "placebo", "prune", "sink", "move"],
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


def test_placebo_targets_are_causal_windows_other_than_the_papers():
    """Every placebo window of 2n keys lies in [0, s) and, over a schedule, they are not the
    paper's window [s - 2n, s)."""
    schedule = paper_schedule(1900, 32, 2)
    starts, papers = [], []
    for seed in range(3):
        placebo = PlaceboTransition(seed=seed)
        for layer, spans in schedule.items():
            for j, (s, e) in enumerate(spans):
                start = placebo.target_start(layer, j, (s, e), prompt_ids=(seed, 1, 2))
                assert 0 <= start and start + 2 * (e - s) <= s
                starts.append(start)
                papers.append(s - 2 * (e - s))
    same = sum(a == b for a, b in zip(starts, papers))
    assert same <= len(starts) // 10, f"{same} of {len(starts)} placebo windows equal the paper's"
    assert len(set(starts)) > len(starts) // 2


@pytest.mark.parametrize("conserve_mass", [False, True])
def test_placebo_rows_get_the_papers_freed_and_added_mass(tiny_model, tokens, conserve_mass):
    """Row by row, the placebo's edited rows have the paper's sums (same freed and added
    mass), its extra mass lies inside its own target window, and it differs from the paper's."""
    layer, seed = 3, 5
    name = pattern_hook(layer)
    out = {}
    for key, tr in (("paper", PaperTransition(alpha=1.0, beta=0.5, layers=(layer,), conserve_mass=conserve_mass)),
                    ("placebo", PlaceboTransition(alpha=1.0, beta=0.5, layers=(layer,), seed=seed,
                                                  conserve_mass=conserve_mass))):
        seen: dict = {}
        pairs = [(name, _capture(seen, "before"))] + tr.hooks(tiny_model) + [(name, _capture(seen, "after"))]
        with torch.inference_mode():
            tiny_model.run_with_hooks(tokens, fwd_hooks=pairs)
        out[key] = seen
    before = out["paper"]["before"]
    torch.testing.assert_close(out["placebo"]["before"], before)  # same input: the layers below are untouched
    spans = paper_schedule(tokens.shape[1], tiny_model.cfg.n_layers, 2)[layer]
    for j, (s, e) in enumerate(spans):
        paper_rows, placebo_rows = out["paper"]["after"][..., s:e, :], out["placebo"]["after"][..., s:e, :]
        torch.testing.assert_close(placebo_rows.sum(-1), paper_rows.sum(-1), atol=1e-5, rtol=1e-5)
        start = PlaceboTransition(seed=seed).target_start(layer, j, (s, e), tokens[0])
        kept = torch.where(before[..., s:e, :] < 1.0 / e, 0.0, before[..., s:e, :])
        kept[..., 0] /= 2
        extra = placebo_rows - kept
        outside = torch.ones(extra.shape[-1], dtype=torch.bool)
        outside[start : start + 2 * (e - s)] = False
        if not conserve_mass:
            assert extra[..., outside].abs().max() < 1e-6, "placebo mass outside its window"
            assert extra[..., ~outside].sum() > 0
        assert not torch.allclose(placebo_rows, paper_rows)


def test_placebo_draws_per_document_the_same_in_any_batch(tiny_model, tokens):
    """Each document gets its own random windows (seeded by its token ids): two documents'
    draws differ, and a document's draw is the same alone and inside a left-padded batch
    (issue #20: one draw for every document is a single sample of the control)."""
    schedule = paper_schedule(1900, 32, 2)
    placebo = PlaceboTransition(seed=4)
    draws = {tuple(placebo.target_start(l, j, span, (doc, 3, 3)) for l, spans in schedule.items()
                   for j, span in enumerate(spans)) for doc in range(4)}
    assert len(draws) == 4
    layer = 3
    doc_a, doc_b = tokens[:, :600], tokens[:, 40:560]
    tr = PlaceboTransition(alpha=1.0, beta=0.5, layers=(layer,), seed=4)
    seen: dict = {}
    alone = {}
    for key, doc in (("a", doc_a), ("b", doc_b)):
        with torch.inference_mode():
            tiny_model.run_with_hooks(doc, fwd_hooks=tr.hooks(tiny_model) + [(pattern_hook(layer), _capture(seen, key))])
        alone[key] = seen[key]
    pad = tiny_model.tokenizer.pad_token_id
    width = doc_a.shape[1]
    ids = torch.cat([doc_a, torch.cat([torch.full((1, width - doc_b.shape[1]), pad), doc_b], 1)])
    mask = (torch.arange(width)[None, :] >= torch.tensor([[0], [width - doc_b.shape[1]]])).long()
    with torch.inference_mode():
        tiny_model.run_with_hooks(ids, attention_mask=mask,
                                  fwd_hooks=tr.hooks(tiny_model) + [(pattern_hook(layer), _capture(seen, "batch"))])
    off = width - doc_b.shape[1]
    torch.testing.assert_close(seen["batch"][0], alone["a"][0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(seen["batch"][1, :, off:, off:], alone["b"][0], atol=1e-5, rtol=1e-4)


def _keep_without_copy(store: dict, key: str, detach: bool):
    """Keep the hooked tensor itself, or ``tensor.detach()`` (which shares its storage) as
    TransformerLens' cache hooks do."""
    def fn(pattern, *, hook):
        store[key] = pattern.detach() if detach else pattern
    return fn


@pytest.mark.parametrize("detach", [True, False], ids=["detached", "itself"])
@pytest.mark.parametrize("edit", ["paper", "sra", "knockout"])
def test_an_earlier_hook_keeps_what_it_saw(tiny_model, tokens, edit, detach):
    """An edit registered after a hook that kept the pattern (no copy) must not change what
    that hook holds: it sees the unedited pattern, whatever the edit does afterwards."""
    from at_probe.flow.knockout import knockout_hooks

    layer = 3
    name = pattern_hook(layer)
    reference: dict = {}
    with torch.inference_mode():
        tiny_model.run_with_hooks(tokens, fwd_hooks=[(name, _capture(reference, "pattern"))])
    edits = {"paper": lambda: PaperTransition(alpha=1.0, beta=0.5, layers=(layer,)).hooks(tiny_model),
             "sra": lambda: SRATransition(**SRA_SMALL, layers=(layer,)).hooks(tiny_model),
             "knockout": lambda: knockout_hooks(10, 200, range(layer, layer + 1))}[edit]
    kept: dict = {}
    after: dict = {}
    with torch.inference_mode():
        tiny_model.run_with_hooks(tokens, fwd_hooks=[(name, _keep_without_copy(kept, "pattern", detach))] + edits()
                                  + [(name, _capture(after, "pattern"))])
    assert not torch.equal(after["pattern"], reference["pattern"]), "the edit must change the pattern"
    assert torch.equal(kept["pattern"], reference["pattern"]), "the earlier hook's tensor was edited"


def test_padding_comes_from_the_mask_not_from_the_weights(tiny_model):
    """In fp16 the first real key can underflow to 0 in every head of the last row; the padding
    must still be read exactly (from the mask in the scores), so row 1 is edited like alone."""
    from types import SimpleNamespace

    layer, t, pad = 3, 450, 30
    tr = PaperTransition(alpha=1.0, beta=0.5, layers=(layer,))
    pairs = dict(tr.hooks(tiny_model)[1:])  # scores and pattern hooks of the layer
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 4, t, t, generator=gen)
    masked = torch.ones(t, t, dtype=torch.bool).triu(1).expand(2, 4, t, t).clone()
    masked[1, :, :, :pad] = True  # row 1 is left-padded by 30 tokens
    scores = scores.masked_fill(masked, torch.finfo(torch.float32).min)
    pattern = scores.softmax(-1)
    pattern[1, :, -1, pad] = 0.0  # the first real key underflowed in every head
    alone = dispense(pattern[1:2, :, pad:, pad:], paper_schedule(t - pad, 8, 2)[layer], 1.0, 0.5)
    hook = SimpleNamespace(name=pattern_hook(layer))
    pairs[f"blocks.{layer}.attn.hook_attn_scores"](scores, hook=hook)
    out = pairs[pattern_hook(layer)](pattern.clone(), hook=hook)
    torch.testing.assert_close(out[1:2, :, pad:, pad:], alone)


def test_dropping_the_score_hooks_is_an_error_not_a_silent_no_op(tiny_model, tokens):
    tr = PaperTransition(alpha=1.0, beta=0.5)
    pattern_pairs = [pair for pair in tr.hooks(tiny_model) if pair[0].endswith("hook_pattern")]
    with pytest.raises(RuntimeError, match="hook_attn_scores"), torch.inference_mode():
        tiny_model.run_with_hooks(tokens, fwd_hooks=pattern_pairs)


def test_right_padding_is_refused(tiny_model, sample_text):
    tok = tiny_model.tokenizer
    ids = tok(sample_text, return_tensors="pt")["input_ids"][:, :450]
    padded = torch.cat([ids, torch.full((1, 20), tok.pad_token_id)], dim=1)
    mask = torch.cat([torch.ones(1, 450, dtype=torch.long), torch.zeros(1, 20, dtype=torch.long)], dim=1)
    with pytest.raises(ValueError, match="left"):
        with PaperTransition(alpha=1.0, beta=0.5).applied(tiny_model), torch.inference_mode():
            tiny_model(torch.cat([padded, padded]), attention_mask=torch.cat([mask, torch.ones_like(mask)]))


def test_an_interval_that_rounds_to_zero_warns_and_changes_nothing(tiny_model, tokens, baseline):
    prompt = tokens[:, :450]
    tr = PaperTransition(alpha=1.0, beta=0.5, intervals_per_layer=90)  # 450 // (7 + 90) = 4 -> 0 tokens
    with torch.inference_mode():
        plain = tiny_model(prompt)
    with pytest.warns(UserWarning, match="rounds down to 0"):
        with tr.applied(tiny_model), torch.inference_mode():
            out = tiny_model(prompt)
    assert torch.equal(out, plain) and tr.last_report().layers == {}


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
    "transition", [PaperTransition(alpha=1.0, beta=0.5), SRATransition(**SRA_SMALL),
                   PlaceboTransition(alpha=1.0, beta=0.5, parts=("sink", "move"))], ids=["paper", "sra", "sink+move"]
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
        alone_spans = {l: r.spans[0] for l, r in transition.last_report().layers.items()}
        assert alone_spans, "the transition must edit this prompt"
        assert {l: spans[row] for l, spans in batch_spans.items() if spans[row]} == alone_spans


@pytest.mark.parametrize(
    "transition", [PaperTransition(alpha=1.0, beta=0.5), SRATransition(**SRA_SMALL),
                   PaperTransition(alpha=1.0, beta=0.5, parts=("prune", "sink"))], ids=["paper", "sra", "prune+sink"]
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


def _capture_all(store: dict, key: str):
    """Capture hook keeping the latest full pattern of each layer under ``(key, layer)``."""
    def fn(pattern, *, hook):
        if pattern.shape[-2] == pattern.shape[-1]:
            store[(key, hook.name)] = pattern.detach().clone()
    return fn


def _continuation_rows_untouched(model, tr_pairs, run, prompt_len):
    """Run ``run(pairs)`` with capture hooks around the transition at every layer; return, per
    scheduled layer, whether the rows from ``prompt_len`` on left the hook as they entered it,
    and whether the prompt's rows were edited at all."""
    seen: dict = {}
    names = [pattern_hook(l) for l in range(model.cfg.n_layers)]
    pairs = ([(n, _capture_all(seen, "before")) for n in names] + tr_pairs
             + [(n, _capture_all(seen, "after")) for n in names])
    run(pairs)
    result = {}
    for n in names:
        before, after = seen[("before", n)], seen[("after", n)]
        assert before.shape[-1] > prompt_len, "the pass must hold rows past the prompt"
        result[n] = (torch.equal(after[..., prompt_len:, :], before[..., prompt_len:, :]),
                     not torch.equal(after[..., :prompt_len, :], before[..., :prompt_len, :]))
    return result


def test_prompt_lengths_protect_continuation_rows(tiny_model, tokens):
    """Teacher forcing: with prompt_lengths, the rows after the prompt leave every hook as they
    entered it (a schedule computed on the whole pass would reach past row 500 here)."""
    prompt_len = 500
    assert max(e for spans in paper_schedule(tokens.shape[1], 8, 2).values() for _, e in spans) > prompt_len
    tr = PaperTransition(alpha=1.0, beta=0.5)

    def run(pairs):
        with torch.inference_mode():
            tiny_model.run_with_hooks(tokens, fwd_hooks=pairs)

    result = _continuation_rows_untouched(tiny_model, tr.hooks(tiny_model, prompt_lengths=prompt_len), run,
                                          prompt_len)
    scheduled = [pattern_hook(l) for l in paper_schedule(prompt_len, 8, 2)]
    assert all(untouched for untouched, _ in result.values())
    assert all(result[n][1] for n in scheduled), "the prompt's rows must be edited"


@pytest.mark.parametrize(
    "tr", [PaperTransition(alpha=1.0, beta=0.5), SRATransition(**SRA_SMALL)], ids=["paper", "sra"]
)
def test_uncached_generation_never_edits_generated_rows(tiny_model, tokens, tr):
    """Without the KV cache each step re-runs prompt + generated tokens: in the last step the
    generated tokens' rows leave every hook unedited, and the prompt's rows are edited. (SRA's
    "outer" part edits the last rows of what it takes for the prompt, so a pass mistaken for a
    new prompt would edit generated rows.) Hooks registered by hand mark the generation with
    ``generating`` (``applied`` does it for every generate call)."""
    prompt_len = 535

    def run(pairs):
        with tiny_model.hooks(fwd_hooks=pairs), generating(tiny_model), torch.inference_mode():
            tiny_model.generate(tokens[:, :prompt_len], max_new_tokens=6, use_past_kv_cache=False,
                                do_sample=False, verbose=False, stop_at_eos=False)

    result = _continuation_rows_untouched(tiny_model, tr.hooks(tiny_model), run, prompt_len)
    edited = [pattern_hook(l) for l in tr.last_report().layers]
    assert edited and all(untouched for untouched, _ in result.values())
    assert all(result[n][1] for n in edited), "the prompt's rows must be edited"


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
