"""Chunked attention (``at_probe.models.chunked``) gives the stock forward's answers, block by
block: logits, every intervention and its report, the probes, knockout and attribution, left
padding, ``generate`` with and without the KV cache (tiny model; SmolLM2 at ~2k tokens in
``test_chunked_smollm2.py``). What needs whole patterns refuses."""

from __future__ import annotations

import pytest
import torch

from at_probe.flow.attribution import attribution_sweep
from at_probe.flow.knockout import knockout_sweep
from at_probe.flow.probe import FlowProbe
from at_probe.flow.region import RegionProbe
from at_probe.interventions.calibration import PositionBias, PositionCalibration
from at_probe.interventions.emphasis import EmphasisSteering
from at_probe.interventions.adaptive_temperature import AdaptiveTemperature
from at_probe.interventions.sink_calibration import SinkCalibration
from at_probe.interventions.sink_scaling import SinkScaling
from at_probe.interventions.temperature import AttentionTemperature
from at_probe.interventions.transition import PaperTransition, PlaceboTransition, SRATransition
from at_probe.models import chunked
from at_probe.models.chunked import (
    ChunkedAttentionError,
    QueryBlock,
    attention_modules,
    chunked_attention,
    chunking,
    current_block,
    query_block,
)
from at_probe.models.names import pattern_hook, scores_hook, value_hook
from at_probe.models.prompts import build_prompt
from at_probe.models.value_product import product_span, sums_in_key_order
from at_probe.xsum import left_pad

ATOL = 1e-5  # issue #22: chunked == stock within 1e-5 (observed: bit for bit)
MODES = [(64, True), (100, False), (48, True)]  # (rows, causal_keys); 700 tokens: 11, 7 and 15 blocks
MODE_IDS = ["rows64-causal", "rows100-all-keys", "rows48-causal"]


def _bias() -> PositionBias:
    return PositionBias(((2.0, 0.5, 0.5, 2.0),) * 8, n_documents=1)


EDITS = {
    "paper": lambda: PaperTransition(),
    "placebo": lambda: PlaceboTransition(seed=3),
    "sra": lambda: SRATransition(begin_length=5, threshold_len=50),
    "emphasis": lambda: EmphasisSteering({5: (0, 2), 6: (1,)}, alpha=0.05),
    "emphasis_instruction": lambda: EmphasisSteering({5: (0, 2)}, alpha=0.05, target="instruction"),
    "emphasis_placebo": lambda: EmphasisSteering({5: (0, 2), 6: (1,)}, alpha=0.05, placebo_seed=1),
    "calibration": lambda: PositionCalibration(_bias(), strength=1.0),
    "temperature": lambda: AttentionTemperature(tau=3.0, layers=(3, 6)),
    "paper_parts": lambda: PaperTransition(parts=("prune", "move")),
    "sink_scaling": lambda: SinkScaling(rate=0.3, layers=(2, 5)),
    "sink_scaling_placebo": lambda: SinkScaling(rate=4.0, placebo_seed=2),
    "adaptive_temperature": lambda: AdaptiveTemperature(),
    "sink_calibration": lambda: SinkCalibration(threshold=0.03, beta=0.1),  # sinks found in a pre-pass
    "sink_calibration_placebo": lambda: SinkCalibration(head_config={3: (0, 1), 5: (2,)}, threshold=0.03, placebo_seed=4),
}


@pytest.fixture(scope="module")
def prompts(tiny_model, sample_text):
    long = build_prompt(tiny_model.tokenizer, sample_text[:3000])
    short = build_prompt(tiny_model.tokenizer, sample_text[:1800])
    assert len(long) > 600 and len(short) > 400  # the paper transition needs >= 400 tokens
    return long, short


@pytest.fixture(scope="module")
def batch(tiny_model, prompts):
    tokens, mask = left_pad(tiny_model, [list(p.ids) for p in prompts])
    return tokens, mask, [tokens.shape[1] - len(p) for p in prompts]


def _assert_same_report(out, ref):
    """Reports agree: counts exactly, means to float rounding (sums taken block by block)."""
    a, b = out.to_frame(), ref.to_frame()
    assert list(a.columns) == list(b.columns) and len(a) == len(b)
    for column in a.columns:
        if a[column].dtype.kind in "iub":
            assert a[column].tolist() == b[column].tolist(), column
        elif a[column].dtype.kind == "f":
            assert a[column].tolist() == pytest.approx(b[column].tolist(), rel=1e-5, abs=1e-7, nan_ok=True), column
        else:
            assert a[column].astype(str).tolist() == b[column].astype(str).tolist(), column
    assert getattr(out, "notes", ()) == getattr(ref, "notes", ())


def _assert_real_rows_close(out, ref, offsets):
    """Logits at every real (non-padding) position. A padding row is masked everywhere; it spreads
    its weight over its block's keys instead of the pass's, so its (unused) output differs."""
    for b, off in enumerate(offsets):
        torch.testing.assert_close(out[b, off:], ref[b, off:], rtol=0, atol=ATOL)


@pytest.mark.parametrize("rows,causal", MODES, ids=MODE_IDS)
def test_logits_equal_the_stock_forward(tiny_model, prompts, batch, rows, causal):
    tokens, mask, offsets = batch
    with torch.inference_mode():
        ref_one, ref_batch = tiny_model(prompts[0].tensor()), tiny_model(tokens, attention_mask=mask)
        with chunked_attention(tiny_model, rows=rows, causal_keys=causal):
            one, padded = tiny_model(prompts[0].tensor()), tiny_model(tokens, attention_mask=mask)
    torch.testing.assert_close(one, ref_one, rtol=0, atol=ATOL)
    _assert_real_rows_close(padded, ref_batch, offsets)


@pytest.mark.parametrize("every_key", [False, True], ids=["as-checked", "every-key"])
def test_chunking_is_exact_not_merely_close(tiny_model, prompts, monkeypatch, every_key):
    """The product with V adds the keys in the stock order (``_pad_keys``): over each block's
    keys rounded up to 512 where this machine's kernels give the stock sums that way
    (``value_product.sums_in_key_order``), else, or when the check says no, over every key.
    Either way, with blocks of 64 rows the logits are the stock logits bit for bit; a change
    there shows here first."""
    spans = []

    def spy(keys, total, unit):
        spans.append((product_span(keys, total, unit), total))
        return spans[-1][0]

    monkeypatch.setattr(chunked, "product_span", spy)
    if every_key:
        monkeypatch.setattr(chunked, "sums_in_key_order", lambda *args: False)
    with torch.inference_mode():
        ref = tiny_model(prompts[0].tensor())
        with chunked_attention(tiny_model, rows=64):
            out = tiny_model(prompts[0].tensor())
    assert torch.equal(out, ref)
    short = not every_key and sums_in_key_order("cpu", torch.float32, 64, tiny_model.cfg.d_head)
    assert spans and any(span < total for span, total in spans) == short


def test_blocks_scores_are_served_from_the_heap(tiny_model, batch, monkeypatch):
    """Each chunked CPU forward asks the allocator to keep tensors of a block's scores (batch x
    heads x rows x the pass's keys, float32) in its heap: mapped anew, each block's few such
    tensors cost page faults, a third of the time at 8,192 tokens (``at_probe.runs.memory``)."""
    tokens, mask, _ = batch
    asked = []
    monkeypatch.setattr(chunked, "heap_allocations_up_to", asked.append)
    with torch.inference_mode(), chunked_attention(tiny_model, rows=64):
        tiny_model(tokens, attention_mask=mask)
    size = tokens.shape[0] * tiny_model.cfg.n_heads * 64 * tokens.shape[1] * 4
    assert asked == [size] * tiny_model.cfg.n_layers


@pytest.mark.parametrize("causal", [True, False], ids=["causal-keys", "all-keys"])
def test_hooks_fire_once_per_block_and_know_their_rows(tiny_model, prompts, causal):
    t = len(prompts[0])
    seen: list[tuple[tuple[int, ...], QueryBlock]] = []
    values: list[tuple[int, int]] = []

    def pattern(tensor, *, hook):
        seen.append((tuple(tensor.shape), query_block(tensor)))

    def value(tensor, *, hook):
        block = current_block()
        values.append((block.start, tensor.shape[1]))

    with chunked_attention(tiny_model, rows=256, causal_keys=causal), torch.inference_mode():
        tiny_model.run_with_hooks(prompts[0].tensor(), fwd_hooks=[(pattern_hook(2), pattern), (value_hook(2), value)])
    starts = list(range(0, t, 256))
    assert [b.start for _, b in seen] == starts
    assert values == [(s, min(256, t - s)) for s in starts]
    for (shape, block), s in zip(seen, starts):
        rows = min(256, t - s)
        keys = s + rows if causal else t
        assert shape[-2:] == (rows, keys) and (block.rows, block.keys, block.past, block.length) == (rows, keys, 0, t)
        assert block.first == (s == 0) and block.last == (s + rows == t) and block.padding == (0,)


def test_query_block_outside_chunking_reads_the_shape():
    whole, step = torch.zeros(1, 2, 5, 5), torch.zeros(1, 2, 1, 9)
    assert query_block(whole) == QueryBlock(0, 5, 5, 0, 5)
    assert query_block(step) == QueryBlock(8, 1, 9, 8, 1)  # a KV-cache decode step: the new token's position


@pytest.mark.parametrize("name", list(EDITS))
@pytest.mark.parametrize("rows,causal", MODES, ids=MODE_IDS)
def test_every_intervention_equals_its_stock_run(tiny_model, prompts, batch, name, rows, causal):
    """Logits at real positions and the edit's report, one prompt and a left-padded batch."""
    tokens, mask, offsets = batch
    edit = EDITS[name]()
    cases = [(prompts[0].tensor(), {}, [prompts[0]], [0]), (tokens, {"attention_mask": mask}, list(prompts), offsets)]
    for ids, kwargs, given, offs in cases:
        with torch.inference_mode():
            base = tiny_model(ids, **kwargs)
            ref = tiny_model.run_with_hooks(ids, fwd_hooks=edit.hooks(tiny_model, prompts=given), **kwargs)
            ref_report = edit.last_report()
            with chunked_attention(tiny_model, rows=rows, causal_keys=causal):
                out = tiny_model.run_with_hooks(ids, fwd_hooks=edit.hooks(tiny_model, prompts=given), **kwargs)
        assert (ref - base).abs().max() > 1e-3  # the edit does something here
        _assert_real_rows_close(out, ref, offs)
        _assert_same_report(edit.last_report(), ref_report)


@pytest.mark.parametrize("name", ["paper", "placebo", "sra", "emphasis", "calibration", "temperature", "sink_scaling",
                                  "adaptive_temperature", "sink_calibration"])
@pytest.mark.parametrize("cache", [True, False], ids=["kv-cache", "no-cache"])
def test_generate_gives_the_stock_tokens(tiny_model, prompts, name, cache):
    edit = EDITS[name]()
    prompt = prompts[1]
    kwargs = {"max_new_tokens": 6, "do_sample": False, "verbose": False, "use_past_kv_cache": cache}
    with edit.applied(tiny_model, prompts=[prompt]), torch.inference_mode():
        ref = tiny_model.generate(prompt.tensor(), **kwargs)
        ref_report = edit.last_report()
        with chunked_attention(tiny_model, rows=64):
            out = tiny_model.generate(prompt.tensor(), **kwargs)
    assert torch.equal(out, ref)
    _assert_same_report(edit.last_report(), ref_report)


def test_decode_steps_see_one_row_at_the_new_position(tiny_model, prompts):
    blocks: list[QueryBlock] = []
    hook = (pattern_hook(0), lambda tensor, *, hook: blocks.append(query_block(tensor)))
    n = len(prompts[1])
    with chunked_attention(tiny_model, rows=128), tiny_model.hooks(fwd_hooks=[hook]), torch.inference_mode():
        tiny_model.generate(prompts[1].tensor(), max_new_tokens=3, do_sample=False, verbose=False)
    prefill, steps = blocks[: -(3 - 1)], blocks[-(3 - 1):]
    assert [b.start for b in prefill] == list(range(0, n, 128))
    assert [(b.start, b.rows, b.past) for b in steps] == [(n, 1, n), (n + 1, 1, n + 1)]


@pytest.mark.parametrize("rows,causal", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("transition", [None, "paper", "sink_calibration"],
                         ids=["plain", "after-paper", "after-act"])  # ACT: its pre-pass unseen by the probe
def test_flow_probe_equals_its_stock_result(tiny_model, prompts, rows, causal, transition):
    prompt = prompts[0]

    def run():
        probe = FlowProbe.for_model(tiny_model, value_weighted=True, document=prompt.document, regions=4)
        edits = [] if transition is None else EDITS[transition]().hooks(tiny_model, prompts=[prompt])
        with torch.inference_mode():
            tiny_model.run_with_hooks(prompt.tensor(), fwd_hooks=edits + probe.hooks())
        return probe.result()

    ref = run()
    with chunked_attention(tiny_model, rows=rows, causal_keys=causal):
        out = run()
    for name in ("region_bounds", "region_mass", "final_token_profile", "sink_mass", "entropy", "distance",
                 "final_token_value_profile"):
        torch.testing.assert_close(getattr(out, name), getattr(ref, name), rtol=1e-5, atol=ATOL, msg=name)
    assert out.region_labels == ref.region_labels


def test_region_probe_equals_its_stock_result(tiny_model, prompts):
    prompt = prompts[0]
    spans = [(100, 130), (400, 420)]

    def run():
        probe = RegionProbe.for_model(tiny_model, row=len(prompt) - 1, spans=spans)
        with torch.inference_mode():
            tiny_model.run_with_hooks(prompt.tensor(), fwd_hooks=probe.hooks())
        return probe

    ref = run()
    with chunked_attention(tiny_model, rows=64):
        out = run()
    assert not ref.mass.isnan().any() and (ref.mass > 0).all()
    torch.testing.assert_close(out.mass, ref.mass, rtol=0, atol=ATOL)
    torch.testing.assert_close(out.flow, ref.flow, rtol=1e-5, atol=ATOL)
    weights = []  # the mass is the row's attention on the spans, read independently
    with torch.inference_mode():
        tiny_model.run_with_hooks(prompt.tensor(), fwd_hooks=[(
            pattern_hook(3), lambda p, *, hook: weights.append(p[0, :, -1].float()))])
    expected = weights[0][:, 100:130].sum(-1) + weights[0][:, 400:420].sum(-1)
    torch.testing.assert_close(ref.mass[3], expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("transition", [None, "placebo", "sink_calibration"], ids=["plain", "with-placebo", "with-act"])
def test_knockout_and_attribution_equal_their_stock_results(tiny_model, prompts, transition):
    prompt = prompts[1].tensor()
    bounds = torch.tensor([0, 1, 100, 250, 350, len(prompts[1]) - 1])
    reference = torch.tensor([[260, 303, 81, 586]])

    def run():
        edit = None if transition is None else EDITS[transition]()
        exact = knockout_sweep(tiny_model, prompt, bounds, band_size=4, reference=reference, transition=edit,
                               progress=False)
        estimate = attribution_sweep(tiny_model, prompt, bounds, band_size=4, reference=reference, transition=edit)
        return exact, estimate

    ref = run()
    with chunked_attention(tiny_model, rows=64):
        out = run()
    torch.testing.assert_close(out[0].kl, ref[0].kl, rtol=1e-4, atol=ATOL)
    torch.testing.assert_close(out[0].nll_delta, ref[0].nll_delta, rtol=1e-4, atol=ATOL)
    torch.testing.assert_close(out[1].nll_delta, ref[1].nll_delta, rtol=1e-4, atol=ATOL)
    assert ref[0].kl.abs().max() > 1e-4 and ref[1].nll_delta.abs().max() > 1e-4


def test_run_with_cache_and_rollout_refuse_with_the_reason(tiny_model, prompts):
    with chunked_attention(tiny_model, rows=64):
        with pytest.raises(ChunkedAttentionError, match="last block"):
            tiny_model.run_with_cache(prompts[0].tensor())
        with pytest.raises(ChunkedAttentionError, match=r"\[L, T, T\] maps"):
            FlowProbe.for_model(tiny_model, rollout=True)
        probe = FlowProbe(8, 4, rollout=True)  # built without the model: refused at the first block
        with pytest.raises(ChunkedAttentionError, match="chunked_attention"), torch.inference_mode():
            tiny_model.run_with_hooks(prompts[0].tensor(), fwd_hooks=probe.hooks())
    _, cache = tiny_model.run_with_cache(prompts[1].tensor())  # restored on exit
    assert cache[pattern_hook(0)].shape[-1] == cache[pattern_hook(0)].shape[-2]


def test_the_context_manager_restores_what_was_in_force(tiny_model, prompts):
    assert chunking(tiny_model) is None
    with chunked_attention(tiny_model, rows=64):
        with chunked_attention(tiny_model, rows=16, causal_keys=False):
            assert (chunking(tiny_model).rows, chunking(tiny_model).causal_keys) == (16, False)
        assert (chunking(tiny_model).rows, chunking(tiny_model).causal_keys) == (64, True)
    assert chunking(tiny_model) is None
    assert not any("forward" in vars(attn) for attn in attention_modules(tiny_model))
    with pytest.raises(RuntimeError), chunked_attention(tiny_model, rows=64):
        raise RuntimeError("body failed")
    assert chunking(tiny_model) is None


@pytest.mark.parametrize("rows", [0, -3, 2.5, True, "64"])
def test_bad_rows_are_refused(tiny_model, rows):
    with pytest.raises(ValueError, match="rows must be a positive integer"):
        with chunked_attention(tiny_model, rows=rows):
            pass
    assert chunking(tiny_model) is None


def test_models_without_the_llama_attention_are_refused():
    class Other(torch.nn.Module):
        pass

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = Other()

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([Block()])

    with pytest.raises(TypeError, match="layer 0 has Other"):
        with chunked_attention(Model()):
            pass
    with pytest.raises(TypeError, match="TransformerBridge"):
        with chunked_attention(torch.nn.Linear(2, 2)):
            pass


def test_load_model_can_chunk_from_the_start():
    import at_probe

    model = at_probe.load_model("tiny", device="cpu", attention_rows=32)
    assert chunking(model).rows == 32 and chunking(model).causal_keys
    scores = []
    with torch.inference_mode():
        model.run_with_hooks(torch.arange(3, 103)[None], fwd_hooks=[(
            scores_hook(0), lambda s, *, hook: scores.append(s.shape[-2]))])
    assert scores == [32, 32, 32, 4]
