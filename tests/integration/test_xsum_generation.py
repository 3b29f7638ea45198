"""The XSum pipeline's model calls (``summarise``, ``reference_nll``): batches equal single
documents on SmolLM2 with settings that change the result, and one prompt limit for both."""

from __future__ import annotations

import pytest

from at_probe.interventions.transition import PaperTransition, PlaceboTransition
from at_probe.xsum import reference_nll, summarise

NEW = 8


@pytest.fixture(scope="module")
def two_docs(heldout_docs):
    """Two held-out 800-bucket documents of different lengths (so one is left-padded)."""
    docs = sorted(heldout_docs[:3], key=lambda d: len(d["document"]))
    return [docs[0], docs[-1]]


@pytest.fixture(scope="module")
def settings():
    return {"baseline": None, "paper": PaperTransition(alpha=1.0, beta=0.5, intervals_per_layer=2),
            "placebo": PlaceboTransition(alpha=1.0, beta=0.5, intervals_per_layer=2)}


@pytest.mark.slow
def test_batch_equals_alone_and_the_settings_change_the_result(smollm2_model, two_docs, settings):
    """Outputs and NLLs of a left-padded batch equal each document alone under the paper
    setting, and paper and placebo each move the NLL far beyond the comparison's tolerance
    (so a batch path that dropped the setting would fail)."""
    documents = [d["document"] for d in two_docs]
    references = [d["summary"] for d in two_docs]
    batched = summarise(smollm2_model, documents, settings["paper"], max_new_tokens=NEW)
    batched_nll = reference_nll(smollm2_model, documents, references, settings["paper"], max_new_tokens=NEW)
    nll = {name: [reference_nll(smollm2_model, [d], [r], tr, max_new_tokens=NEW)[0]
                  for d, r in zip(documents, references)] for name, tr in settings.items()}
    for i, doc in enumerate(documents):
        assert batched[i] == summarise(smollm2_model, [doc], settings["paper"], max_new_tokens=NEW)[0]
        assert batched_nll[i] == pytest.approx(nll["paper"][i], abs=1e-4)
    for name in ("paper", "placebo"):  # each moves every NLL by over 10x the batch comparison's tolerance
        moved = [abs(a - b) for a, b in zip(nll[name], nll["baseline"])]
        assert min(moved) > 1e-3, f"{name} barely changes the reference NLL: {moved}"
    assert nll["paper"] != pytest.approx(nll["placebo"], abs=1e-3)


def test_reference_nll_cuts_a_prompt_the_same_whatever_its_batch_mates(tiny_model, sample_text):
    """One prompt limit: a document's prompt (and so its NLL) does not depend on how long the
    other references in its batch are."""
    doc, ref = sample_text, "A town voted to buy its harbour."
    alone = reference_nll(tiny_model, [doc], [ref], None, max_new_tokens=40, max_prompt_tokens=300)[0]
    with_long_mate = reference_nll(tiny_model, [doc, doc[:400]], [ref, ref * 4], None, max_new_tokens=40,
                                   max_prompt_tokens=300)[0]
    assert with_long_mate == pytest.approx(alone, abs=1e-4)
