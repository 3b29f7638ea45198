"""Overhead benchmarks, measured side by side in one process (ratios, not absolute times).

* transition: a forward pass of a ``--tokens``-token document with the paper transition on all
  scheduled layers (and SRA) vs the same forward without it;
* alternatives: the same forward with ``EmphasisSteering``, ``PositionCalibration``,
  ``AttentionTemperature``, ``SinkScaling``, ``SinkCalibration``, ``AdaptiveTemperature`` and
  ``MultiScalePositions`` (``alternatives``) vs without;
* decode steps: the forward time of a KV-cache decode step (after that document as the prompt)
  with each transition and each alternative active vs none, timed inside ``generate`` from the
  embedding's input to the unembedding's output (``--decode-steps`` steps per call). The
  alternatives edit every decode step; the transitions edit the prompt's rows at prefill and
  leave decode steps alone, so theirs is the cost of hooks that do nothing;
* probe: the same forward with a ``FlowProbe`` attached (with and without rollout) vs without;
* memory: on the CPU, peak RSS of ``analyses/flow.py`` on that document (probe passes;
  knockout off, its passes are plain forwards with a band of edited layers), and of the same
  with the causal map by attribution patching (``--attribution``: a backward pass), vs a plain
  forward of the same tokens, each in a fresh subprocess; on a GPU, peak allocated device
  memory of a probe pass vs a plain forward, in this process;
* generation: greedy tokens per second of batched generation through the bridge vs Hugging
  Face ``generate`` on the wrapped model (same prompts, same number of new tokens, eager
  attention both, KV cache both), and through the bridge with the paper transition active vs
  inactive; ``--profile FILE`` writes where the bridge's time goes (cProfile, one batch).

* long context (``--long-context 2048,4096,8192``): the budgets of chunked attention against an
  HF SDPA forward (``at_probe.cli.bench_context``);
* chunked prefill (``--attention-rows R`` without ``--long-context``): the transitions', the
  alternatives' and the probe's prefill ratios with attention over blocks of ``R`` query rows,
  each against the plain forward run the same way (ACT's pre-pass included).

Each timing ratio is the median over ``--repeats`` interleaved (paired) runs.

Usage:
    python analyses/bench.py                                   # SmolLM2, CPU
    python analyses/bench.py --model tiny                      # the embedded tiny model
    python analyses/bench.py --model DIR --device cuda         # a local checkpoint on a GPU
    python analyses/bench.py --model random-llama-7b --device cuda   # llama-7b's shape, random weights, bf16
    python analyses/bench.py --long-context 2048,4096,8192 --repeats 3 --json figures/bench-cpu/long_context.json
    python analyses/bench.py --tokens 4096 --attention-rows 128 --repeats 3    # chunked prefill ratios
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import torch

from at_probe.cli.args import (
    ArgumentParser,
    existing_file,
    model_name,
    nonnegative_int,
    output_file,
    positive_int,
    prog,
    torch_device,
)
from at_probe.cli.bench_memory import conditions_memory, cuda_memory_ratio, memory_ratio
from at_probe.flow.probe import FlowProbe
from at_probe.interventions.adaptive_temperature import AdaptiveTemperature
from at_probe.interventions.calibration import PositionBias, PositionCalibration
from at_probe.interventions.emphasis import EmphasisSteering
from at_probe.interventions.multiscale_positions import MultiScalePositions
from at_probe.interventions.sink_calibration import SinkCalibration
from at_probe.interventions.sink_scaling import SinkScaling
from at_probe.interventions.temperature import AttentionTemperature
from at_probe.interventions.transition import PaperTransition, SRATransition
from at_probe.models.chunked import chunked_attention
from at_probe.models.loading import DEFAULT_MODEL, load_model, random_llama
from at_probe.models.prompts import Prompt
from at_probe.runs.runfiles import write_json_atomic
from at_probe.xsum import bucket_file, load_records

REPO = Path(__file__).resolve().parents[2]
DEFAULT_XSUM = bucket_file(REPO.parent / "shared" / "data" / "xsum-at-release", "1900")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


ALTERNATIVE_KEYS = ("emphasis_steering", "position_calibration", "attention_temperature", "sink_scaling",
                    "sink_calibration", "adaptive_temperature", "multiscale_positions")


def alternatives(model: Any) -> dict[str, Any]:
    """The alternatives as timed: emphasis on one head in each layer of the last half (the
    document emphasised, the last 16 tokens standing for the instruction), calibration with a
    non-flat bias of 8 regions and temperature 0.8, both on the last half of the layers; sink
    scaling (rate 2) and adaptive temperature on every head of every layer, sink calibration
    on every head of layers ``2 .. L-2`` and multi-scale positions on layers ``2 .. L-1``, their
    defaults."""
    n_layers = int(model.cfg.n_layers)
    last_half = range(n_layers // 2, n_layers)
    bias = PositionBias(tuple(tuple(1.0 + 0.1 * r for r in range(8)) for _ in range(n_layers)), 1)
    return {"emphasis_steering": EmphasisSteering({l: (0,) for l in last_half}),
            "position_calibration": PositionCalibration(bias), "attention_temperature": AttentionTemperature(0.8),
            "sink_scaling": SinkScaling(2.0), "sink_calibration": SinkCalibration(),
            "adaptive_temperature": AdaptiveTemperature(), "multiscale_positions": MultiScalePositions()}


def paired_ratio(plain: Callable[[], Any], treated: Callable[[], Any], repeats: int,
                 device: torch.device) -> dict[str, float]:
    """Median of treated/plain time ratios over interleaved runs (one warm-up each), the order
    alternating round by round so that neither always runs after the other."""
    plain(), treated()
    ratios, base_times = [], []
    for round_ in range(repeats):
        times = {}
        for name, fn in (("plain", plain), ("treated", treated))[:: 1 if round_ % 2 == 0 else -1]:
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name] = time.perf_counter() - t0
        base_times.append(times["plain"])
        ratios.append(times["treated"] / times["plain"])
    return {"ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "plain_seconds_median": statistics.median(base_times)}


def decode_step_seconds(model: Any, tokens: torch.Tensor, steps: int, applied: Callable[[], Any],
                        device: torch.device) -> float:
    """Median forward time (seconds) of the ``steps`` KV-cache decode steps of one greedy
    ``generate`` call on ``tokens`` (``[1, T]``) inside ``applied()``; the prefill pass is not
    counted. Timed from ``embed.hook_in`` to ``unembed.hook_out``, so the generate loop's
    sampling and bookkeeping, the same with or without an edit, stay out."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    starts: list[float] = []
    ends: list[float] = []
    lengths: list[int] = []

    def start(ids: torch.Tensor, hook: Any) -> None:
        lengths.append(int(ids.shape[-1]))
        _sync(device)
        starts.append(time.perf_counter())

    def end(logits: torch.Tensor, hook: Any) -> None:
        _sync(device)
        ends.append(time.perf_counter())

    with applied(), model.hooks(fwd_hooks=[("embed.hook_in", start), ("unembed.hook_out", end)]), \
            torch.inference_mode():
        model.generate(tokens, max_new_tokens=steps + 1, do_sample=False, stop_at_eos=False, verbose=False,
                       use_past_kv_cache=True)
    if len(starts) != steps + 1 or len(ends) != steps + 1 or lengths[1:] != [1] * steps:
        raise RuntimeError(f"expected a prefill then {steps} one-token KV-cache steps, timed passes of "
                           f"{lengths} tokens ({len(ends)} ends)")
    return statistics.median(e - s for s, e in zip(starts[1:], ends[1:]))


def decode_step_ratios(model: Any, tokens: torch.Tensor, edits: dict[str, Callable[[], Any]], steps: int,
                       repeats: int, device: torch.device) -> dict[str, dict[str, float]]:
    """Per edit: the median over ``repeats`` rounds of (its decode-step time / the plain model's,
    timed beside it: before it in even rounds, after it in odd ones), after one warm-up round."""
    ratios: dict[str, list[float]] = {key: [] for key in edits}
    base: list[float] = []
    for round_ in range(repeats + 1):
        for key, applied in edits.items():
            if round_ % 2:
                t_edit = decode_step_seconds(model, tokens, steps, applied, device)
                t_plain = decode_step_seconds(model, tokens, steps, contextlib.nullcontext, device)
            else:
                t_plain = decode_step_seconds(model, tokens, steps, contextlib.nullcontext, device)
                t_edit = decode_step_seconds(model, tokens, steps, applied, device)
            if round_:
                ratios[key].append(t_edit / t_plain)
                base.append(t_plain)
    return {key: {"ratio_median": statistics.median(r), "ratio_min": min(r), "ratio_max": max(r),
                  "plain_step_seconds_median": statistics.median(base), "steps": steps}
            for key, r in ratios.items()}


def document_tokens(model: Any, n_tokens: int, xsum: Path) -> tuple[torch.Tensor, str]:
    """``n_tokens`` tokens of the first XSum document long enough, else of repeated sample text."""
    if xsum.is_file():
        for i, rec in enumerate(load_records(xsum)):
            toks = model.to_tokens(rec["document"])
            if toks.shape[1] >= n_tokens:
                return toks[:, :n_tokens], f"{xsum.name}#{i}"
    from at_probe.models.loading import SAMPLE_DOCUMENT

    toks = model.to_tokens(SAMPLE_DOCUMENT.read_text() * 8)
    return toks[:, :n_tokens], "sample document repeated"


def xsum_throughput(model: Any, docs: list[dict], batch_size: int, max_new_tokens: int) -> dict[str, float]:
    """Documents per second of greedy summarisation, batch ``batch_size`` vs batch 1 (same docs)."""
    from at_probe.xsum import summarise

    prompts = [d["document"] for d in docs]
    rates = {}
    summarise(model, prompts[:1], None, max_new_tokens=4)  # warm-up
    for size in (1, batch_size):
        t0 = time.perf_counter()
        for i in range(0, len(prompts), size):
            summarise(model, prompts[i : i + size], None, max_new_tokens=max_new_tokens)
        rates[size] = len(prompts) / (time.perf_counter() - t0)
    return {"docs_per_s_batch_1": rates[1], f"docs_per_s_batch_{batch_size}": rates[batch_size],
            "ratio": rates[batch_size] / rates[1], "documents": len(prompts)}


def generation_rates(model: Any, docs: list[dict], batch_size: int, max_new_tokens: int, repeats: int,
                     device: torch.device, profile: Path | None = None) -> dict[str, Any]:
    """Bridge vs HF ``generate`` (and transition on vs off) on one batch of chat prompts, paired.

    The decode-only rates are approximate: they combine the medians of separate paired runs
    (``max_new_tokens`` new tokens, then 1) rather than timing the decode steps themselves.
    Every run computes ``max_new_tokens`` steps for the whole batch (no early stop) so the rates
    count the same work; the tokens are compared up to each row's first EOS. The rates are new
    tokens per second over the whole call (prefill included); the decode-only rate subtracts a
    prefill-only call (one new token).
    """
    from at_probe.models.prompts import build_prompts
    from at_probe.xsum import left_pad, prompt_limit

    prompts = build_prompts(model.tokenizer, [d["document"] for d in docs[:batch_size]],
                            max_tokens=prompt_limit(model, None, max_new_tokens))
    ids, mask = left_pad(model, [list(p.ids) for p in prompts])
    hf = model.original_model
    no_stop = copy.deepcopy(hf.generation_config)  # the bridge runs with stop_at_eos=False: same here
    no_stop.eos_token_id = None
    no_stop.pad_token_id = model.tokenizer.pad_token_id
    paper = PaperTransition(alpha=1.0, beta=0.5, intervals_per_layer=2)

    def bridge(n: int, transition: Any = None) -> Callable[[], Any]:
        def run() -> Any:
            ctx = transition.applied(model) if transition is not None else contextlib.nullcontext()
            with ctx, torch.inference_mode():
                return model.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False,
                                      stop_at_eos=False, verbose=False)
        return run

    def huggingface(n: int) -> Callable[[], Any]:
        def run() -> Any:
            with torch.inference_mode():
                return hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False,
                                   generation_config=no_stop)
        return run

    eos = model.tokenizer.eos_token_id
    same = until_eos(bridge(max_new_tokens)()[:, ids.shape[1]:], eos) == until_eos(
        huggingface(max_new_tokens)()[:, ids.shape[1]:], eos)
    vs_hf = paired_ratio(huggingface(max_new_tokens), bridge(max_new_tokens), repeats, device)
    prefill = paired_ratio(huggingface(1), bridge(1), repeats, device)
    transition = paired_ratio(bridge(max_new_tokens), bridge(max_new_tokens, paper), repeats, device)
    transition_prefill = paired_ratio(bridge(1), bridge(1, paper), repeats, device)
    new = ids.shape[0] * max_new_tokens

    def decode_rate(total: float, first: float) -> float:
        return ids.shape[0] * (max_new_tokens - 1) / max(total - first, 1e-9)

    hf_total, hf_first = vs_hf["plain_seconds_median"], prefill["plain_seconds_median"]
    br_total = hf_total * vs_hf["ratio_median"]
    br_first = hf_first * prefill["ratio_median"]
    tr_total = transition["plain_seconds_median"] * transition["ratio_median"]
    tr_first = transition_prefill["plain_seconds_median"] * transition_prefill["ratio_median"]
    result = {
        "batch": ids.shape[0], "prompt_tokens": ids.shape[1], "new_tokens": max_new_tokens,
        "same_tokens_as_hf": same,
        "hf_tokens_per_s": new / hf_total, "bridge_tokens_per_s": new / br_total,
        "bridge_over_hf_throughput": hf_total / br_total,
        "bridge_over_hf_decode_throughput": decode_rate(br_total, br_first) / decode_rate(hf_total, hf_first),
        "transition_over_plain_throughput": 1 / transition["ratio_median"],
        "transition_over_plain_decode_throughput":
            decode_rate(tr_total, tr_first) / decode_rate(transition["plain_seconds_median"],
                                                          transition_prefill["plain_seconds_median"]),
        "pairs": {"bridge_vs_hf": vs_hf, "bridge_vs_hf_prefill": prefill, "transition": transition,
                  "transition_prefill": transition_prefill},
    }
    if profile is not None:
        result["profile"] = str(profile)
        write_profile(bridge(max_new_tokens), profile)
    return result


def print_ratios(results: dict[str, Any], keys: Sequence[str]) -> None:
    """One line per timed condition: its median ratio, the spread, the plain forward's time."""
    for key in keys:
        r = results[key]
        print(f"{key:<20} {r['ratio_median']:.3f}x  (min {r['ratio_min']:.3f}, max {r['ratio_max']:.3f}; "
              f"plain forward {r['plain_seconds_median'] * 1000:.0f} ms)")


def until_eos(tokens: torch.Tensor, eos: int) -> list[list[int]]:
    """Each row up to and including its first EOS (HF pads finished rows; the bridge goes on)."""
    rows = tokens.tolist()
    return [row[: row.index(eos) + 1] if eos in row else row for row in rows]


def write_profile(fn: Callable[[], Any], path: Path, top: int = 40) -> None:
    """cProfile of one call of ``fn``: the ``top`` entries by own time, then by cumulative time."""
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    prof.runcall(fn)
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(buf.getvalue())


def build_model(name: str, device: str | None) -> Any:
    """``random-llama-7b`` (llama-7b's shape, random bf16 weights on a GPU), else ``load_model``."""
    if name == "random-llama-7b":
        return random_llama(device=device)
    return load_model(name, device=device)


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="bench.py", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL,
                   type=lambda text: text if text == "random-llama-7b" else model_name(text),
                   help="'smollm2' (default), 'tiny', a local HF Llama directory, a hub id, or "
                        "'random-llama-7b' (llama-7b's shape, random weights)")
    p.add_argument("--device", type=torch_device, default=None)
    p.add_argument("--tokens", type=positive_int, default=1900,
                   help="prompt tokens, at most the model's context (default 1900)")
    p.add_argument("--repeats", type=positive_int, default=7)
    p.add_argument("--xsum", type=existing_file, default=DEFAULT_XSUM,
                   help="XSum release file for the document (default: the 1900 bucket, if present; else the "
                        "sample document repeated)")
    p.add_argument("--decode-steps", type=nonnegative_int, default=16,
                   help="KV-cache decode steps timed per generate call (0: skip the decode comparison)")
    p.add_argument("--decode-only", action="store_true", help="run the decode-step comparison alone")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--memory-only", action="store_true",
                   help="on the CPU, only the memory of flow.py's conditions run together vs alone")
    p.add_argument("--memory-tokens", type=positive_int, default=800,
                   help="prompt tokens of the conditions' memory comparison (default 800)")
    p.add_argument("--throughput-docs", type=nonnegative_int, default=16,
                   help="held-out 800-bucket documents for the batch-8 vs batch-1 throughput (0 skips)")
    p.add_argument("--generation-batch", type=nonnegative_int, default=8,
                   help="held-out 800-bucket documents in the bridge vs HF generation batch (0 skips)")
    p.add_argument("--profile", type=output_file, default=None,
                   help="write a cProfile of bridge generation here")
    from at_probe.cli import bench_context

    bench_context.add_arguments(p, REPO.parent / "shared" / "data" / "xsum-at-release")
    p.add_argument("--json", type=output_file, default=None)
    args = p.parse_args(argv)
    given = p.given(argv)
    if args.long_context:
        return bench_context.run_long_context(p, args, given, finish)
    for flag in ("--stock-up-to", "--data"):
        if flag in given:
            p.error(f"argument {flag}: needs --long-context")
    rows = args.attention_rows if "--attention-rows" in given else None  # chunked prefill ratios
    if rows is not None:
        p.refuse(given, ("--decode-only", "--memory-only", "--memory-tokens", "--profile", "--decode-steps",
                         "--skip-memory", "--throughput-docs", "--generation-batch"),
                 "is not used with --attention-rows without --long-context (prefill ratios only)")
    if args.decode_only:
        if args.decode_steps < 1:
            p.error("argument --decode-steps: must be >= 1 with --decode-only")
        p.refuse(given, ("--skip-memory", "--throughput-docs", "--generation-batch", "--profile"),
                 "is not used with --decode-only")
    if args.generation_batch == 0:
        p.refuse(given, ("--profile",), "profiles the generation, which --generation-batch 0 skips")

    torch.manual_seed(0)
    try:
        model = build_model(args.model, args.device)
    except (FileNotFoundError, ValueError, OSError) as err:
        print(f"{prog('bench.py')}: error: {err}", file=sys.stderr)
        return 2
    if args.tokens > int(model.cfg.n_ctx):
        print(f"{prog('bench.py')}: error: argument --tokens: {args.tokens} tokens, but {args.model}'s context is "
              f"{model.cfg.n_ctx}", file=sys.stderr)
        return 2
    device = torch.device(model.cfg.device)
    tokens, source = document_tokens(model, args.tokens, args.xsum)
    if args.memory_only:
        if device.type != "cpu" or "#" not in source:
            p.error("argument --memory-only: needs the CPU and an XSum file (--xsum)")
        results = {"model": args.model, "source": source, "conditions_memory": conditions_memory(args, source)}
        m = results["conditions_memory"]
        print(f"{'conditions together':<20} {m['ratio']:.3f}x  ({m['both_peak_rss_mib']:.0f} MiB vs "
              f"{max(m['alone_peak_rss_mib'].values()):.0f} MiB for the largest alone)")
        return finish(results, args.json)
    print(f"model {args.model} on {device}, {tokens.shape[1]} tokens from {source}")

    def plain() -> None:
        with torch.inference_mode():
            model(tokens)

    def hooked(make_pairs: Callable[[], list]) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                model.run_with_hooks(tokens, fwd_hooks=make_pairs())
        return run

    def probed(rollout: bool) -> Callable[[], None]:
        def run() -> None:
            probe = FlowProbe.for_model(model, rollout=rollout)
            with torch.inference_mode():
                model.run_with_hooks(tokens, fwd_hooks=probe.hooks())
                probe.result()
        return run

    results: dict[str, Any] = {"model": args.model, "device": str(device), "tokens": tokens.shape[1],
                               "source": source}
    paper = PaperTransition(alpha=1.0, beta=0.5, intervals_per_layer=2)
    sra = SRATransition()
    # the document spans all but the last 16 tokens, which stand for the instruction
    layout = [Prompt(tuple(tokens[0].tolist()), "plain", (1, tokens.shape[1] - 16))]
    if args.decode_only:
        results["decode_step"] = decode_comparison(model, tokens, paper, sra, layout, args, device)
        return finish(results, args.json)
    edits: dict[str, Callable[[], list]] = {"paper_transition": lambda: paper.hooks(model),
                                            "sra_transition": lambda: sra.hooks(model)}
    edits.update({key: lambda e=edit: e.hooks(model, prompts=layout) for key, edit in alternatives(model).items()})
    if rows is not None:  # prefill ratios alone, each against the plain forward, both chunked
        results["attention_rows"] = rows
        with chunked_attention(model, rows=rows):
            results.update({key: paired_ratio(plain, hooked(make), args.repeats, device) for key, make in edits.items()})
            results["probe"] = paired_ratio(plain, probed(False), args.repeats, device)
        print_ratios(results, ("paper_transition", "sra_transition", *ALTERNATIVE_KEYS, "probe"))
        return finish(results, args.json)
    results.update({key: paired_ratio(plain, hooked(make), args.repeats, device) for key, make in edits.items()})
    results["probe"] = paired_ratio(plain, probed(False), args.repeats, device)
    results["probe_with_rollout"] = paired_ratio(plain, probed(True), args.repeats, device)
    print_ratios(results, ("paper_transition", "sra_transition", *ALTERNATIVE_KEYS, "probe", "probe_with_rollout"))
    if args.decode_steps > 0:
        results["decode_step"] = decode_comparison(model, tokens, paper, sra, layout, args, device)
    if not args.skip_memory and device.type == "cuda":
        results["gpu_memory_probe"] = m = cuda_memory_ratio(plain, probed(False))
        print(f"{'probe peak memory':<20} {m['ratio']:.3f}x  ({m['treated_peak_mib']:.0f} MiB vs "
              f"{m['plain_peak_mib']:.0f} MiB; activations {m['activation_ratio']:.2f}x)")
    elif not args.skip_memory and args.xsum.is_file() and "#" in source and args.model != "random-llama-7b":
        # (flow.py loads checkpoints only, so the CPU memory comparison needs one)
        results["memory"] = memory_ratio(args, source)
        results["memory_with_causal_map"] = memory_ratio(args, source, "--attribution")
        for key, label in (("memory", "flow.py peak RSS"), ("memory_with_causal_map", "  + attribution")):
            m = results[key]
            print(f"{label:<20} {m['ratio']:.3f}x  ({m['flow_py_peak_rss_mib']:.0f} MiB vs "
                  f"{m['plain_forward_peak_rss_mib']:.0f} MiB for a plain forward)")
    bucket_800 = bucket_file(args.xsum.parent, "800")
    from at_probe.xsum import is_heldout

    heldout_800 = [d for d in load_records(bucket_800) if is_heldout(d["id"])] if bucket_800.is_file() else []
    if args.generation_batch > 0 and heldout_800:
        results["generation"] = g = generation_rates(model, heldout_800, args.generation_batch, 50, args.repeats,
                                                     device, args.profile)
        print(f"{'bridge vs HF generate':<20} {g['bridge_over_hf_throughput']:.3f}x tokens/s "
              f"(decode only {g['bridge_over_hf_decode_throughput']:.3f}x; {g['bridge_tokens_per_s']:.1f} vs "
              f"{g['hf_tokens_per_s']:.1f} tokens/s, batch {g['batch']}, {g['prompt_tokens']} prompt tokens, "
              f"same tokens: {g['same_tokens_as_hf']})")
        print(f"{'transition on vs off':<20} {g['transition_over_plain_throughput']:.3f}x tokens/s "
              f"(decode only {g['transition_over_plain_decode_throughput']:.3f}x)")
    if args.throughput_docs > 0 and heldout_800:
        docs = heldout_800[: args.throughput_docs]
        results["xsum_throughput"] = t = xsum_throughput(model, docs, 8, 50)
        print(f"{'xsum batch 8 vs 1':<20} {t['ratio']:.2f}x  ({t['docs_per_s_batch_8']:.2f} vs "
              f"{t['docs_per_s_batch_1']:.2f} documents/s, {t['documents']} documents, 50 new tokens)")
    return finish(results, args.json)


def decode_comparison(model: Any, tokens: torch.Tensor, paper: Any, sra: Any, layout: list[Prompt],
                      args: argparse.Namespace, device: torch.device) -> dict[str, dict[str, float]]:
    """Decode-step time ratios of both transitions and every alternative, printed."""
    edits = {"paper_transition": lambda: paper.applied(model), "sra_transition": lambda: sra.applied(model),
             **{key: (lambda e=edit: e.applied(model, prompts=layout))
                for key, edit in alternatives(model).items()}}
    out = decode_step_ratios(model, tokens, edits, args.decode_steps, args.repeats, device)
    for key, r in out.items():
        print(f"{'decode ' + key:<28} {r['ratio_median']:.3f}x  (min {r['ratio_min']:.3f}, max "
              f"{r['ratio_max']:.3f}; plain step {r['plain_step_seconds_median'] * 1000:.1f} ms)")
    return out


def finish(results: dict[str, Any], path: Path | None) -> int:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
