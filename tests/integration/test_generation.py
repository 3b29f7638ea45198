"""Greedy generation is right: KV cache == no cache == Hugging Face, and batches == alone.

transformer-lens 4.3.0 with transformers 5.24 silently ignored the KV cache (the cache
keyword was renamed); the pin in pyproject.toml avoids it and these tests catch it.
"""

from __future__ import annotations

import torch

NEW = 24


def _prompt(model, text: str, n_tokens: int) -> torch.Tensor:
    return model.to_tokens(text)[:, :n_tokens]


def test_cached_uncached_and_hf_agree(tiny_model, tiny_hf, sample_text):
    tokens = _prompt(tiny_model, sample_text, 300)
    kw = dict(max_new_tokens=NEW, do_sample=False, verbose=False, stop_at_eos=False)
    with torch.inference_mode():
        cached = tiny_model.generate(tokens, use_past_kv_cache=True, **kw)
        uncached = tiny_model.generate(tokens, use_past_kv_cache=False, **kw)
        hf = tiny_hf.generate(tokens, attention_mask=torch.ones_like(tokens), max_new_tokens=NEW,
                              do_sample=False, min_new_tokens=NEW)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached, hf)


def test_left_padded_batch_equals_alone(tiny_model, sample_text):
    texts = [sample_text[:1200], sample_text[1500:2000]]
    tok = tiny_model.tokenizer
    enc = tok(texts, padding=True, return_tensors="pt")
    assert (enc["attention_mask"][1] == 0).any(), "the second prompt must be padded"
    kw = dict(max_new_tokens=NEW, do_sample=False, verbose=False, stop_at_eos=False)
    with torch.inference_mode():
        batch = tiny_model.generate(enc["input_ids"], attention_mask=enc["attention_mask"], **kw)
        for row, text in enumerate(texts):
            alone = tiny_model.generate(tok(text, return_tensors="pt")["input_ids"], **kw)
            assert torch.equal(batch[row, -NEW:], alone[0, -NEW:]), f"row {row} differs from alone"
