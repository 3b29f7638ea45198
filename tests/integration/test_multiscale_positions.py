"""Ms-PoE-style multi-scale positions on the tiny model (GQA: 4 query heads, 2 key-value heads):
the rotation and ranking written independently from the authors' code, batches, the KV cache,
the placebo, and the refusals."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from at_probe.interventions.multiscale_positions import MultiScalePositions, compression_ratios
from at_probe.models.chunked import chunked_attention
from at_probe.models.prompts import build_prompt
from at_probe.xsum import left_pad

LAYER = 3


@pytest.fixture(scope="module")
def prompts(tiny_model, sample_text):
    return build_prompt(tiny_model.tokenizer, sample_text[:2500]), build_prompt(tiny_model.tokenizer, sample_text[:1500])


def _capture(model, prompt, edit):
    seen = {}
    names = ("hook_q", "hook_k", "hook_rot_q", "hook_rot_k")

    def keep(name):
        def fn(tensor, *, hook):
            seen[name] = tensor.detach().clone()
        return fn

    pairs = edit.hooks(model, prompts=[prompt]) + [(f"blocks.{LAYER}.attn.{n}", keep(n)) for n in names]
    with torch.inference_mode():
        model.run_with_hooks(prompt.tensor(), fwd_hooks=pairs)
    return seen


def ms_poe_reference(q, k, inv_freq, low, high, groups):
    """From the authors' ``MsPoELlamaRotaryEmbedding`` and ``_calculate_outlier``: ratios
    ``low + (high - low) i / n``; per head, the last row's position-free attention, outliers
    above 3x its mean; positions ``t / ratio`` turned into cos/sin per head. Here the ranking
    gives the j-th ranked key-value group the j-th ratio (the paper's rule), groups ranked by
    their query heads' mean share."""
    t, n_kv = k.shape[1], k.shape[2]
    qh, kh = q[0].transpose(0, 1), k[0].transpose(0, 1).repeat_interleave(groups, 0)  # [H, T, d]
    attn = torch.softmax(qh[:, -1:, :] @ kh.transpose(1, 2) / math.sqrt(q.shape[-1]), -1)[:, 0]  # [H, T]
    outlier = (attn > 3 * attn.mean(-1, keepdim=True)).float().mean(-1)
    order = torch.argsort(-outlier.view(n_kv, groups).mean(-1), stable=True)
    ratio = torch.empty(n_kv, dtype=q.dtype)
    ratio[order] = low + (high - low) * torch.arange(n_kv, dtype=q.dtype) / n_kv
    rotated = []
    for x, per_head in ((q, ratio.repeat_interleave(groups)), (k, ratio)):
        pos = torch.arange(t, dtype=q.dtype)[None, :] / per_head[:, None]  # [heads, T]
        freqs = pos[..., None] * inv_freq  # [heads, T, d/2]
        emb = torch.cat((freqs, freqs), -1)
        out, _ = apply_rotary_pos_emb(x.transpose(1, 2), x.transpose(1, 2), emb.cos(), emb.sin(), unsqueeze_dim=0)
        rotated.append(out.transpose(1, 2))
    return rotated, ratio


def test_matches_the_authors_arithmetic(tiny_model, prompts):
    """Against the reference in float64: our queries and keys are as close as the authors' own
    float32 arithmetic is (within 2x: the bridge's float32 turn by ``p`` comes first, ours by
    ``p (1/r - 1)`` after it, where they turn by ``p / r`` once)."""
    edit = MultiScalePositions(layers=(LAYER,))
    seen = _capture(tiny_model, prompts[0], edit)
    inv_freq = tiny_model.rotary_emb.original_component.inv_freq
    (q64, k64), ratio = ms_poe_reference(seen["hook_q"].double(), seen["hook_k"].double(), inv_freq.double(), 1.2, 1.8, 2)
    (q32, k32), _ = ms_poe_reference(seen["hook_q"], seen["hook_k"], inv_freq.float(), 1.2, 1.8, 2)
    for ours, exact, theirs in ((seen["hook_rot_q"], q64, q32), (seen["hook_rot_k"], k64, k32)):
        error = (ours.double() - exact).abs().max()
        assert error <= 2 * (theirs.double() - exact).abs().max() and error < 1e-3
    torch.testing.assert_close(edit.last_report().ratios[LAYER][0], ratio.float())
    assert sorted(ratio.tolist()) == pytest.approx(compression_ratios(2, 1.2, 1.8).tolist())


def _logits(model, prompt, edit):
    with edit.applied(model, prompts=[prompt]), torch.inference_mode():
        return model(prompt.tensor())


def test_left_padded_batch_equals_alone_and_changes_the_output(tiny_model, prompts):
    edit = MultiScalePositions(low=1.5, high=4.0)
    ids, mask = left_pad(tiny_model, [list(p.ids) for p in prompts])
    pad = ids.shape[1] - len(prompts[1])
    with edit.applied(tiny_model, prompts=list(prompts)), torch.inference_mode():
        batch = tiny_model(ids, attention_mask=mask)
    for row, p in enumerate(prompts):
        alone = _logits(tiny_model, p, edit)
        torch.testing.assert_close(batch[row, pad if row else 0 :], alone[0], atol=1e-4, rtol=1e-4)
    with torch.inference_mode():
        plain = tiny_model(prompts[0].tensor())
    assert (_logits(tiny_model, prompts[0], edit) - plain).abs().max() > 1e-3


def test_generation_cached_equals_uncached(tiny_model, prompts):
    edit = MultiScalePositions(low=2.0, high=6.0, layers=tuple(range(1, 8)))
    ids, mask = left_pad(tiny_model, [list(p.ids) for p in prompts])
    kw = dict(attention_mask=mask, max_new_tokens=12, do_sample=False, verbose=False, stop_at_eos=False)
    with torch.inference_mode():
        with edit.applied(tiny_model, prompts=list(prompts)):
            cached = tiny_model.generate(ids, use_past_kv_cache=True, **kw)
        with edit.applied(tiny_model, prompts=list(prompts)):
            uncached = tiny_model.generate(ids, use_past_kv_cache=False, **kw)
        plain = tiny_model.generate(ids, use_past_kv_cache=True, **kw)
    assert torch.equal(cached, uncached)
    assert not torch.equal(cached, plain), "the edit must change generation for this test to mean anything"


def test_placebo_shuffles_the_ratios_per_document(tiny_model, prompts):
    real = MultiScalePositions(layers=tuple(range(1, 8)))
    _capture(tiny_model, prompts[0], real)
    ranked = real.last_report().ratios
    draws = []
    for seed in range(6):
        placebo = MultiScalePositions(layers=tuple(range(1, 8)), placebo_seed=seed)
        _capture(tiny_model, prompts[0], placebo)
        shuffled = placebo.last_report().ratios
        assert all(sorted(shuffled[l][0].tolist()) == sorted(ranked[l][0].tolist()) for l in ranked)
        draws.append(torch.stack([shuffled[l][0] for l in sorted(shuffled)]))
    assert any(not torch.equal(d, torch.stack([ranked[l][0] for l in sorted(ranked)])) for d in draws)
    again = MultiScalePositions(layers=tuple(range(1, 8)), placebo_seed=0)
    _capture(tiny_model, prompts[0], again)
    assert torch.equal(torch.stack([again.last_report().ratios[l][0] for l in sorted(ranked)]), draws[0])


def test_refusals(tiny_model, prompts):
    with pytest.raises(ValueError, match="layer 0"):
        MultiScalePositions(layers=(0, 1)).hooks(tiny_model)
    for low, high in ((0.5, 1.8), (1.9, 1.8), (float("nan"), 2.0)):
        with pytest.raises(ValueError, match="low|high"):
            MultiScalePositions(low=low, high=high)
    kw = dict(max_new_tokens=2, do_sample=False, verbose=False, use_past_kv_cache=True)

    def missing(skip):
        """Generate with the hooks named by ``skip(name)`` silent in the prefill (pass 1); the
        number of the pass that raised."""
        passes = []

        def wrapped(name, fn):
            def run(tensor, *, hook):
                if name == "embed.hook_in":
                    passes.append(hook)
                if len(passes) == 1 and skip(name):
                    return None
                return fn(tensor, hook=hook)
            return run

        pairs = [(n, wrapped(n, fn)) for n, fn in MultiScalePositions().hooks(tiny_model)]
        with tiny_model.hooks(fwd_hooks=pairs), torch.inference_mode(), pytest.raises(RuntimeError, match="prefill"):
            tiny_model.generate(prompts[1].tensor(), **kw)
        return len(passes)

    # a decode step whose prompt was never ranked must not rank from its one row: it raises
    assert missing(lambda name: name != "embed.hook_in") == 2
    assert missing(lambda name: name == "blocks.2.attn.hook_q") == 1  # the ranking's keys without queries


def test_prompt_lengths_rank_the_prompts_last_row_and_must_fit(tiny_model, prompts):
    """A pass longer than its prompts (a reference after each, as the causal map runs) ranks each
    sequence at its prompt's last row, as the prompt alone does; lengths that do not fit refuse."""
    edit = MultiScalePositions(layers=tuple(range(1, 8)))
    extra = [list(p.ids) + list(range(100, 140)) for p in prompts]
    ids, mask = left_pad(tiny_model, extra)
    lengths = [len(p) for p in prompts]
    with torch.inference_mode():
        with edit.applied(tiny_model, prompt_lengths=lengths):
            tiny_model(ids, attention_mask=mask)
        longer = edit.last_report().ratios
        with edit.applied(tiny_model):  # ranked at each sequence's last row
            tiny_model(ids, attention_mask=mask)
        at_end = edit.last_report().ratios
    for b, p in enumerate(prompts):
        _capture(tiny_model, p, edit)
        alone = edit.last_report().ratios
        assert all(torch.equal(longer[l][b], alone[l][0]) for l in alone)
    assert any(not torch.equal(longer[l], at_end[l]) for l in longer)
    for bad in ([len(extra[0]) + 1, lengths[1]], lengths[:1]):
        with edit.applied(tiny_model, prompt_lengths=bad), torch.inference_mode(), pytest.raises(
                ValueError, match="do not fit"):
            tiny_model(ids, attention_mask=mask)


def test_only_chunked_passes_project_again(tiny_model, prompts, monkeypatch):
    """A whole pass ranks from hook_q / hook_k (no projection of its own: Ms-PoE's prefill cost);
    only a chunked pass computes queries and keys again from the layer's input."""
    from at_probe.interventions import multiscale_positions

    calls = []
    projections = multiscale_positions._queries_keys
    monkeypatch.setattr(multiscale_positions, "_queries_keys", lambda *a: calls.append(a[1]) or projections(*a))
    edit = MultiScalePositions(layers=(2, 3))
    with edit.applied(tiny_model, prompts=[prompts[0]]), torch.inference_mode():
        tiny_model(prompts[0].tensor())
        assert calls == []
        with chunked_attention(tiny_model, rows=64):
            tiny_model(prompts[0].tensor())
    assert calls == [2, 3]


def test_positions_once_per_pass_and_the_turn_once_per_layer(tiny_model, prompts, monkeypatch):
    """A whole pass (prefill or decode step) reads its positions once for every edited layer, and
    each layer computes its turn once for its queries and keys (Ms-PoE's decode-step cost)."""
    from at_probe.interventions import multiscale_positions

    positions, turns = [], []
    read, tables = multiscale_positions.rope_positions, multiscale_positions.turn_tables
    monkeypatch.setattr(multiscale_positions, "rope_positions", lambda *a: positions.append(1) or read(*a))
    monkeypatch.setattr(multiscale_positions, "turn_tables", lambda a: turns.append(1) or tables(a))
    edit = MultiScalePositions(layers=(2, 3, 5))
    with edit.applied(tiny_model, prompts=[prompts[0]]), torch.inference_mode():
        tiny_model.generate(prompts[0].tensor(), max_new_tokens=3, do_sample=False, verbose=False,
                            stop_at_eos=False, use_past_kv_cache=True)
    assert (len(positions), len(turns)) == (3, 3 * 3)  # the prefill and 2 decode steps; 3 layers each


@pytest.mark.parametrize("rows", [64, 100])
def test_chunked_attention_gives_the_unchunked_ratios_and_logits(tiny_model, prompts, rows):
    """The ranking reads the layer's input, which sees the whole pass: every block is rotated
    with the ratios an unchunked pass gives (the left-padded batch's real rows, bit for bit)."""
    edit = MultiScalePositions(low=1.5, high=4.0, layers=tuple(range(1, 8)))
    ids, mask = left_pad(tiny_model, [list(p.ids) for p in prompts])
    offsets = [ids.shape[1] - len(p) for p in prompts]
    with torch.inference_mode():
        with edit.applied(tiny_model, prompts=list(prompts)):
            ref = tiny_model(ids, attention_mask=mask)
            ref_ratios = edit.last_report().ratios
            with chunked_attention(tiny_model, rows=rows):
                out = tiny_model(ids, attention_mask=mask)
        plain = tiny_model(ids, attention_mask=mask)
    assert (ref - plain).abs().max() > 1e-3
    for b, off in enumerate(offsets):
        torch.testing.assert_close(out[b, off:], ref[b, off:], rtol=0, atol=1e-5)
    ratios = edit.last_report().ratios
    assert sorted(ratios) == sorted(ref_ratios) and all(torch.equal(ratios[l], ref_ratios[l]) for l in ratios)


@pytest.mark.parametrize("cache", [True, False], ids=["kv-cache", "no-cache"])
def test_chunked_generation_gives_the_unchunked_tokens(tiny_model, prompts, cache):
    edit = MultiScalePositions(low=2.0, high=6.0, layers=tuple(range(1, 8)))
    ids, mask = left_pad(tiny_model, [list(p.ids) for p in prompts])
    kw = dict(attention_mask=mask, max_new_tokens=12, do_sample=False, verbose=False, stop_at_eos=False,
              use_past_kv_cache=cache)
    with edit.applied(tiny_model, prompts=list(prompts)), torch.inference_mode():
        ref = tiny_model.generate(ids, **kw)
        with chunked_attention(tiny_model, rows=64):
            out = tiny_model.generate(ids, **kw)
    with torch.inference_mode():
        plain = tiny_model.generate(ids, **kw)
    assert torch.equal(out, ref) and not torch.equal(ref, plain)
