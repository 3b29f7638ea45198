"""The decode-step timer of analyses/bench.py times decode steps only, and sees a slower edit."""

from __future__ import annotations

import contextlib
import time

import pytest
import torch

from conftest import load_script

bench = load_script("bench")

DELAY_S = 0.2  # far above a tiny-model decode step, even on 2 busy cores


def sleeping(model, *, first_pass_only: bool, passes: list | None = None):
    """An "edit" that sleeps in block 0 on every pass, or (20x longer) on the prefill pass only;
    ``passes`` collects each pass's length."""
    passes = [] if passes is None else passes

    def hook(x, hook):
        passes.append(x.shape[1])
        if not first_pass_only:
            time.sleep(DELAY_S)
        elif len(passes) == 1:
            time.sleep(20 * DELAY_S)

    return lambda: model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", hook)])


def test_decode_step_seconds_counts_every_decode_step_and_not_the_prefill(tiny_model):
    tokens = torch.arange(1, 41).unsqueeze(0)
    passes = []
    slow = bench.decode_step_seconds(tiny_model, tokens, 4, sleeping(tiny_model, first_pass_only=False,
                                                                     passes=passes), torch.device("cpu"))
    assert passes == [40, 1, 1, 1, 1], "a prefill, then one-token KV-cache steps"
    plain = bench.decode_step_seconds(tiny_model, tokens, 4, contextlib.nullcontext, torch.device("cpu"))
    prefill_only = bench.decode_step_seconds(
        tiny_model, tokens, 1, sleeping(tiny_model, first_pass_only=True), torch.device("cpu"))
    assert not any(tiny_model.hook_dict[name]._forward_hooks for name in ("embed.hook_in", "unembed.hook_out",
                                                                           "blocks.0.hook_resid_pre"))
    assert slow >= DELAY_S > plain
    assert prefill_only < 4 * DELAY_S, "a delay in the prefill pass must not count as decode time"


def test_decode_step_ratios_pairs_each_edit_with_the_plain_model(tiny_model):
    tokens = torch.arange(1, 41).unsqueeze(0)
    edits = {"slow": sleeping(tiny_model, first_pass_only=False), "none": contextlib.nullcontext}
    out = bench.decode_step_ratios(tiny_model, tokens, edits, 3, 2, torch.device("cpu"))
    assert set(out) == {"slow", "none"}
    assert out["slow"]["ratio_median"] > 2 * out["none"]["ratio_median"]
    assert out["slow"]["steps"] == 3


def test_decode_step_seconds_refuses_cacheless_passes(tiny_model):
    def without_cache():
        return tiny_model.hooks(fwd_hooks=[])

    original = tiny_model.generate

    def cacheless(*args, **kw):
        return original(*args, **{**kw, "use_past_kv_cache": False})

    tiny_model.generate = cacheless  # what an adapter without KV-cache support does silently
    try:
        with pytest.raises(RuntimeError, match="one-token KV-cache steps"):
            bench.decode_step_seconds(tiny_model, torch.arange(1, 41).unsqueeze(0), 2, without_cache,
                                      torch.device("cpu"))
    finally:
        del tiny_model.generate
    assert tiny_model.generate == original


def test_memory_ratio_runs_both_children(tmp_path):
    """``memory_ratio``'s two child processes (a plain forward, ``flow.py``) run from any working
    directory of the installed package (they once imported a function from ``analyses/``)."""
    import argparse

    from tests.conftest import XSUM_DIR, require_shared

    xsum = require_shared(XSUM_DIR / "token_800_evaluation.json.gz")
    args = argparse.Namespace(model="tiny", device="cpu", tokens=64, xsum=xsum)
    result = bench.memory_ratio(args, f"{xsum.name}#0", "--transition", "none")
    assert result["plain_forward_peak_rss_mib"] > 0 and result["ratio"] > 0


def test_chunked_prefill_ratios_time_every_edit_under_chunked_attention(tmp_path):
    """``--attention-rows`` alone: the prefill ratios, each edit and its plain forward both over
    blocks of query rows (a pre-pass included), and nothing else."""
    import json

    out = tmp_path / "bench.json"
    assert bench.main(["--model", "tiny", "--tokens", "420", "--attention-rows", "64", "--repeats", "1",
                       "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["attention_rows"] == 64 and "sink_calibration" in results and "probe" in results
    assert not {"probe_with_rollout", "decode_step", "generation", "memory"} & set(results)


def test_long_context_refuses_lengths_past_the_models_context(tmp_path, capsys):
    """Before any model loads: the tiny model's context is 4,096 tokens."""
    out = tmp_path / "bench.json"
    assert bench.main(["--model", "tiny", "--long-context", "2048,8192", "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert "argument --long-context: 8192 tokens exceed the context of tiny (4096 tokens)" in err
    assert not out.exists()


@pytest.mark.parametrize("bug", [ValueError, TypeError, KeyError])
def test_long_context_lets_a_bug_keep_its_traceback(bug, tmp_path, monkeypatch):
    """Only bad input is exit 2: an error inside the timed run is raised as it is."""
    from at_probe.cli import bench_context
    from tests.conftest import XSUM_DIR, require_shared

    def broken(*_args, **_kwargs):
        raise bug("a bug in the bench")

    monkeypatch.setattr(bench_context, "run", broken)
    args = ["--model", "tiny", "--long-context", "512", "--data", str(require_shared(XSUM_DIR)),
            "--json", str(tmp_path / "bench.json")]
    with pytest.raises(bug, match="a bug in the bench"):
        bench.main(args)


def test_long_context_refuses_too_little_text_before_timing_anything(tmp_path, monkeypatch, capsys):
    from at_probe.cli import bench_context
    from at_probe.longctx import tasks
    from tests.conftest import XSUM_DIR, require_shared

    monkeypatch.setattr(tasks, "development_documents", lambda data: ["A short text."])
    monkeypatch.setattr(bench_context, "run", lambda *a, **k: pytest.fail("the bench ran"))
    args = ["--model", "tiny", "--long-context", "512", "--data", str(require_shared(XSUM_DIR)),
            "--json", str(tmp_path / "bench.json")]
    assert bench.main(args) == 2
    assert capsys.readouterr().err.strip() == ("bench.py: error: argument --long-context: the development "
                                               "documents hold fewer than 512 tokens")
