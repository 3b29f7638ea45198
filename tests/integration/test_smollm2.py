"""SmolLM2-135M-Instruct, a real pretrained Llama (30 layers, 9 query / 3 KV heads): loading,
parity with Hugging Face, generation, batches and the transition applied the seed's way.

Prompts are short (a few hundred tokens) to keep the suite fast; the paper transition needs
at least 400 prompt tokens, so the prompts that test it are longer than that.
"""

from __future__ import annotations

import pytest
import torch
import transformers.models.llama.modeling_llama as hf_llama

from at_probe.models.names import pattern_hook
from at_probe.models.prompts import build_prompt
from at_probe.interventions.transition import PaperTransition, SRATransition, dispense, paper_schedule, sra_layer

LOGIT_ATOL = 1e-4  # bridge and HF run the same eager float32 attention; only op order may differ
NEW = 12
SRA_EXAMPLE = dict(begin_length=5, threshold_len=50, elimi_factor_inter=0.5, elimi_factor_outer=0.5,
                   strengthen_factor_inter=5.0, strengthen_factor_outer=5.0)  # the authors' worked example


@pytest.fixture(scope="module")
def prompt(smollm2_model, sample_text):
    """The sample document's chat prompt, cut to 480 tokens (long enough for the paper version)."""
    p = build_prompt(smollm2_model.tokenizer, sample_text, max_tokens=480)
    assert p.style == "chat" and len(p) == 480
    return p.tensor()


def _greedy(model, tokens, **kw):
    with torch.inference_mode():
        return model.generate(tokens, max_new_tokens=NEW, do_sample=False, verbose=False, stop_at_eos=False, **kw)


def test_loads_as_a_gqa_llama_bridge(smollm2_model):
    cfg = smollm2_model.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.d_model) == (30, 9, 576)
    assert cfg.dtype == torch.float32 and not smollm2_model.training
    assert smollm2_model.tokenizer.padding_side == "left"
    assert smollm2_model.tokenizer.chat_template, "the chat template must survive the conversion"


def test_bridge_logits_match_hf_eager(smollm2_model, smollm2_hf, prompt):
    with torch.inference_mode():
        ours = smollm2_model(prompt)
        theirs = smollm2_hf(prompt).logits
    err = (ours - theirs).abs().max().item()
    assert err < LOGIT_ATOL, f"max |bridge - HF| logit error {err:.2e}"


def test_greedy_chat_generation_cached_uncached_and_hf_agree(smollm2_model, smollm2_hf, sample_text):
    tokens = build_prompt(smollm2_model.tokenizer, sample_text, max_tokens=200).tensor()
    cached = _greedy(smollm2_model, tokens, use_past_kv_cache=True)
    uncached = _greedy(smollm2_model, tokens, use_past_kv_cache=False)
    with torch.inference_mode():
        hf = smollm2_hf.generate(tokens, attention_mask=torch.ones_like(tokens), max_new_tokens=NEW,
                                 min_new_tokens=NEW, do_sample=False)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached, hf)


def test_left_padded_batch_equals_alone_with_a_transition_that_changes_the_output(smollm2_model, sample_text):
    """Each row of a left-padded batch gets exactly what it gets alone, transition included, and
    the transition changes the greedy tokens (so a batch path that dropped it would fail)."""
    tok = smollm2_model.tokenizer
    rows = [list(build_prompt(tok, sample_text, max_tokens=n).ids) for n in (560, 450)]
    width = max(map(len, rows))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    tr = PaperTransition(alpha=1.0, beta=0.5, intervals_per_layer=2)
    with tr.applied(smollm2_model):
        batch = _greedy(smollm2_model, ids, attention_mask=mask)
    assert [len(s) for s in tr.last_report().layers[5].spans] == [2, 2]
    for i, row in enumerate(rows):
        alone_ids = torch.tensor([row])
        with tr.applied(smollm2_model):
            alone = _greedy(smollm2_model, alone_ids)
        plain = _greedy(smollm2_model, alone_ids)
        assert torch.equal(batch[i, -NEW:], alone[0, -NEW:]), f"row {i}: batch differs from alone"
        assert not torch.equal(alone[0, -NEW:], plain[0, -NEW:]), f"row {i}: the transition changed nothing"


def test_head_subset_on_gqa_edits_only_those_query_heads(smollm2_model, prompt):
    """Heads index the 9 query heads (K/V are shared in groups of 3): heads 1 and 5 (two
    different KV groups) are edited exactly as dispense() would, the other seven untouched."""
    layer, heads = 12, (1, 5)
    seen: dict[str, torch.Tensor] = {}

    def keep(key):
        def fn(pattern, *, hook):
            seen[key] = pattern.detach().clone()
        return fn

    name = pattern_hook(layer)
    sub = PaperTransition(alpha=1.0, beta=0.5, layers=(layer,), heads=heads)
    pairs = [(name, keep("before"))] + sub.hooks(smollm2_model) + [(name, keep("after"))]
    with torch.inference_mode():
        sub_logits = smollm2_model.run_with_hooks(prompt, fwd_hooks=pairs)
        full_logits = smollm2_model.run_with_hooks(
            prompt, fwd_hooks=PaperTransition(alpha=1.0, beta=0.5, layers=(layer,)).hooks(smollm2_model))
        base_logits = smollm2_model(prompt)
    spans = paper_schedule(prompt.shape[1], 30, 2)[layer]
    expected = dispense(seen["before"], spans, 1.0, 0.5)
    others = [h for h in range(9) if h not in heads]
    torch.testing.assert_close(seen["after"][:, list(heads)], expected[:, list(heads)])
    assert torch.equal(seen["after"][:, others], seen["before"][:, others])
    assert (sub_logits - base_logits).abs().max() > 1e-3
    assert (sub_logits - full_logits).abs().max() > 1e-3


def _seed_style_eager(edit):
    """HF's eager attention with ``edit(weights, layer)`` between the softmax and the product
    with V: where the original modeling_llama.py applies the transition."""

    def forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        keys = hf_llama.repeat_kv(key, module.num_key_value_groups)
        values = hf_llama.repeat_kv(value, module.num_key_value_groups)
        scores = torch.matmul(query, keys.transpose(2, 3)) * scaling
        if attention_mask is not None:
            scores = scores + attention_mask
        weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
        weights = edit(weights, module.layer_idx)
        return torch.matmul(weights, values).transpose(1, 2).contiguous(), weights

    return forward


def _paper_edit(seq_len):
    schedule = paper_schedule(seq_len, 30, 2)
    return lambda w, layer: dispense(w, schedule[layer], 1.0, 0.5) if layer in schedule else w


def _sra_edit(w, layer):
    return sra_layer(w, layer, 30, **SRA_EXAMPLE) if layer < 29 else w


@pytest.mark.parametrize(("transition", "edit_for"), [
    (PaperTransition(alpha=1.0, beta=0.5, intervals_per_layer=2), _paper_edit),
    (SRATransition(**SRA_EXAMPLE), lambda seq_len: _sra_edit),
], ids=["paper", "sra"])
def test_bridge_hooks_match_the_seed_mechanism(smollm2_model, smollm2_hf, prompt, monkeypatch,
                                               transition, edit_for):
    """The transition through the bridge's hook_pattern equals the original's edit inside HF's
    eager attention (post-softmax, pre-V), to 1e-4 in the logits."""
    with torch.inference_mode():
        base = smollm2_hf(prompt).logits
        monkeypatch.setattr(hf_llama, "eager_attention_forward", _seed_style_eager(edit_for(prompt.shape[1])))
        seed = smollm2_hf(prompt).logits
        ours = smollm2_model.run_with_hooks(prompt, fwd_hooks=transition.hooks(smollm2_model))
    assert (seed - base).abs().max() > 1.0, "the seed-style edit must change the logits"
    err = (ours - seed).abs().max().item()
    assert err < LOGIT_ATOL, f"max |hooks - seed mechanism| logit error {err:.2e}"
