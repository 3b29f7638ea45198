"""Oracle for ``summary_nll`` (``at_probe.xsum.reference_nll``), the metric behind every
development selection: the teacher-forced NLL computed by hand from a plain forward pass of an
independent Hugging Face copy of the tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from at_probe.models.prompts import build_prompts, continuation_ids
from at_probe.xsum import prompt_limit, reference_nll

NEW = 50  # reference_nll's default room after the prompt


def _by_hand(hf_model, prompt: list[int], reference: list[int], *, shift: int = 1) -> float:
    """Mean over reference tokens ``t`` of ``-log softmax(logits[t - shift])[token t]``, with the
    log-softmax written out (``x - max - log sum exp(x - max)``) in float64. ``shift=1`` is the
    teacher-forced NLL; ``shift=0`` scores each token with its own position's logits (wrong)."""
    ids = prompt + reference
    with torch.inference_mode():
        logits = hf_model(torch.tensor([ids])).logits[0].double()
    total = 0.0
    for t in range(len(prompt), len(ids)):
        x = logits[t - shift]
        top = float(x.max())
        log_z = top + math.log(float(torch.exp(x - top).sum()))
        total -= float(x[ids[t]]) - log_z
    return total / len(reference)


@pytest.fixture(scope="module")
def two_documents(sample_text):
    """Two documents of different lengths (the shorter is left-padded in a batch) and references."""
    references = ["A town voted to buy its harbour.", "Ferries stop at night."]
    return [sample_text[:300], sample_text[:900]], references


def test_reference_nll_equals_the_hand_computed_teacher_forced_nll(tiny_model, tiny_hf, two_documents):
    documents, references = two_documents
    tok = tiny_model.tokenizer
    limit = prompt_limit(tiny_model, None, NEW)
    prompts = [list(p.ids) for p in build_prompts(tok, documents, max_tokens=limit)]
    refs = [continuation_ids(tok, r) for r in references]
    assert len(prompts[0]) + len(refs[0]) != len(prompts[1]) + len(refs[1])  # the batch is padded
    expected = [_by_hand(tiny_hf, p, r) for p, r in zip(prompts, refs)]
    got = reference_nll(tiny_model, documents, references, None, max_new_tokens=NEW)
    assert got == pytest.approx(expected, abs=1e-4)
    # the oracle can tell an off-by-one: scoring token t with the logits at t is far off
    misaligned = [_by_hand(tiny_hf, p, r, shift=0) for p, r in zip(prompts, refs)]
    assert all(abs(m - e) > 0.1 for m, e in zip(misaligned, expected))
