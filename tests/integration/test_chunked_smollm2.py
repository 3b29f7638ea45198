"""Chunked attention on SmolLM2 at ~2k tokens (30 layers, GQA, a real sink): the stock
forward's logits, probe results and reports, and greedy tokens, bit for bit in practice
(``test_chunked.py`` covers every intervention on the tiny model)."""

from __future__ import annotations

import pytest
import torch

from at_probe.flow.probe import FlowProbe
from at_probe.interventions.multiscale_positions import MultiScalePositions
from at_probe.interventions.sink_calibration import SinkCalibration
from at_probe.interventions.transition import PaperTransition, PlaceboTransition, SRATransition
from at_probe.models.chunked import chunked_attention
from at_probe.models.prompts import build_prompt
from tests.conftest import XSUM_DIR, require_shared

pytestmark = pytest.mark.slow  # ~2k-token SmolLM2 passes: about a minute on 2 CPU cores

ATOL = 1e-5


@pytest.fixture(scope="module")
def long_prompt(smollm2_model):
    from at_probe.xsum.release import is_development, load_all_documents

    records = [d for d in load_all_documents(require_shared(XSUM_DIR)) if is_development(d["id"])]
    prompt = build_prompt(smollm2_model.tokenizer, "\n\n".join(d["document"] for d in records[:12]), max_tokens=2048)
    assert len(prompt) == 2048
    return prompt


@pytest.mark.parametrize("edit", [None, PaperTransition(), PlaceboTransition(seed=1),
                                  SRATransition(begin_length=5, threshold_len=50)],
                         ids=["baseline", "paper", "placebo", "sra"])
def test_logits_probe_and_report_equal_the_stock_run(smollm2_model, long_prompt, edit):
    model, prompt = smollm2_model, long_prompt

    def run():
        probe = FlowProbe.for_model(model, value_weighted=True, document=prompt.document)
        edits = [] if edit is None else edit.hooks(model, prompts=[prompt])
        with torch.inference_mode():
            logits = model.run_with_hooks(prompt.tensor(), fwd_hooks=edits + probe.hooks())
        return logits, probe.result(), None if edit is None else edit.last_report()

    ref_logits, ref_flow, ref_report = run()
    with chunked_attention(model, rows=512):
        logits, flow, report = run()
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=ATOL)
    for name in ("region_mass", "final_token_profile", "sink_mass", "entropy", "distance", "final_token_value_profile"):
        torch.testing.assert_close(getattr(flow, name), getattr(ref_flow, name), rtol=1e-5, atol=ATOL, msg=name)
    if edit is not None:
        assert str(report) == str(ref_report)
        assert [r.rows_touched for r in report.layers.values()] == [r.rows_touched for r in ref_report.layers.values()]


def test_greedy_tokens_with_and_without_the_cache(smollm2_model, long_prompt):
    model, ids = smollm2_model, long_prompt.tensor()
    edit = SRATransition(begin_length=5, threshold_len=50)
    # two tokens: the second is a decode step on the cache (cached) and a second full pass (uncached)
    kwargs = {"max_new_tokens": 2, "do_sample": False, "verbose": False}
    with edit.applied(model, prompts=[long_prompt]), torch.inference_mode():
        ref = model.generate(ids, **kwargs)
        with chunked_attention(model, rows=512):
            cached = model.generate(ids, **kwargs)
            uncached = model.generate(ids, use_past_kv_cache=False, **kwargs)
    assert torch.equal(cached, ref) and torch.equal(uncached, ref)


@pytest.mark.parametrize("edit", [SinkCalibration(), MultiScalePositions(low=1.1, high=1.4)], ids=["act", "ms-poe"])
def test_the_peers_that_need_every_row_equal_the_stock_run(smollm2_model, long_prompt, edit):
    """ACT (hidden sinks from a pre-pass) and Ms-PoE (ranking from the layer's input) over blocks
    of 512 rows: the unchunked logits, sinks and ratios."""
    model, prompt = smollm2_model, long_prompt

    def run():
        with edit.applied(model, prompts=[prompt]), torch.inference_mode():
            logits = model(prompt.tensor())
        run = edit._last_run
        state = run.memory[0] if hasattr(run, "memory") else run.ratios
        return logits, {k: v.clone() for k, v in state.items()}

    ref_logits, ref_state = run()
    with chunked_attention(model, rows=512):
        logits, state = run()
    assert any(bool((v != v.flatten()[0]).any()) for v in ref_state.values())  # some sinks; unequal ratios
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=ATOL)
    assert sorted(state) == sorted(ref_state) and all(torch.equal(state[k], ref_state[k]) for k in state)
