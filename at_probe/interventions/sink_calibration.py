"""ACT-style sink calibration (Yu et al., ICML 2024, "Unveiling and Harnessing Hidden Attention
Sinks"): keys other than the first that soak up attention are damped, their mass given back.

On each chosen head, a key ``j >= 1`` of the prompt is a *hidden sink* when the mean attention it
receives over the prompt rows that can see it (rows ``j .. P-1``) exceeds ``threshold``
(0.1 in the authors' scripts). Every query row's weights on the hidden sinks are multiplied by
``beta`` (0.4) and the freed mass ``(1 - beta) * sum(sinks)`` goes to the row's other keys, the
first token's included, in proportion to their weights, so rows keep their sums. As in the
authors' code (``GATECH-EIC/ACT``, ``models/llama_modelling_aug.py``, ``atten_process_eval``):
post-softmax, layers ``2 .. L-2``, the hidden sinks found afresh for every input and head. The
authors calibrate heads chosen by a search (one head calibrated at a time, kept if it helps);
``head_config`` takes such a choice (``at_probe.interventions.profiling`` ranks heads the same
way), while the default and the ``sink_calibration:`` setting calibrate every head of the
layers, which is not their method (their search keeps some heads of each layer).

Where we differ from that code, deliberately: it spares the first *detected* column (usually,
not always, the first token); here key 0 is never a hidden sink. It edits batch row 0 only and
detects from the whole pass; here each sequence of a left-padded batch uses its own prompt rows.
Its decode steps detect from the one new row and set the first key's weight to 1 (its rows then
sum to 2); here the hidden sinks are found once per prompt, from the prompt's rows at prefill,
and every later row (decode steps, cache-less continuations, teacher-forced tokens) is
calibrated with them. So cached and cache-less generation agree.

Detection reads every prompt row of a layer before any of them is edited: a row's edit depends
on later rows. Under chunked attention (a block of rows at a time) the layer's blocks therefore
run twice (``at_probe.models.chunked.request_prepass``): a pre-pass up to the softmax sums each
key's received attention over the prompt rows, then the pass edits every block with the sinks
found. The pre-pass sees the layer's pattern before any hook edits it; unchunked, detection sees
the pattern as it reaches this edit's hook, which is the same unless another edit of the same
layer's queries, keys, scores or pattern runs before it. Sums are taken in float64 in both modes.

The placebo (``placebo_seed``) damps as many random keys as each head has hidden sinks,
drawn among the prompt's other keys (never key 0, never a hidden sink) per layer, head and
document: the control for "is it those keys, or damping any keys by beta".

Example:
    >>> from at_probe.interventions.sink_calibration import SinkCalibration
    >>> edit = SinkCalibration({5: (0, 3), 12: (7,)})          # {layer: query heads}
    >>> with edit.applied(model), torch.inference_mode():
    ...     logits = model(tokens)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from at_probe.interventions.base import (
    AttentionEdit,
    HookPair,
    SequenceView,
    checked_head_config,
    config_heads,
    int_tuple,
)
from at_probe.interventions.profiling import top_head_config
from at_probe.interventions.registry import (
    PLACEBO_SEED,
    Key,
    Method,
    Placebo,
    layer_range,
    register,
    show_layer_range,
)
from at_probe.interventions.tracking import check_lengths_fit
from at_probe.models.chunked import ChunkedAttentionError, QueryBlock, chunking, request_prepass
from at_probe.models.names import resolve_layers, scores_hook
from at_probe.runs.seeding import draw_generator, prompt_digest

if TYPE_CHECKING:
    from at_probe.models.prompts import Prompt

Pattern = Float[Tensor, "batch head query_pos key_pos"]
SinkMask = Bool[Tensor, "head key_pos"]

_WHY_WHOLE = "hidden sinks are found from every prompt row of a layer before any row is edited"
_SUM_ROWS = 256  # rows per float64 slice of a column sum


def hidden_sinks(pattern: Float[Tensor, "head rows keys"], prompt_length: int, threshold: float) -> SinkMask:
    """Keys ``j`` in ``1 .. P-1`` whose mean attention over the prompt rows that see them (rows
    ``j .. P-1``) exceeds ``threshold``, per head: ``[head, P]`` (key 0 is never one).

    Args:
        pattern: one sequence's attention ``[head, rows, keys]``, rows and keys from its first
            token, at least ``P = prompt_length`` of each.
    """
    return sinks_of(column_sums(pattern[:, :prompt_length, :prompt_length]), threshold)


def column_sums(rows: Float[Tensor, "head rows keys"]) -> Float[Tensor, "head keys"]:
    """Each key's weight summed over ``rows``, in float64 (so the order of a sum, whole or block
    by block, does not move a key across the threshold), a slice of rows at a time (no float64
    copy of the whole pattern)."""
    out = torch.zeros(rows.shape[0], rows.shape[-1], dtype=torch.float64, device=rows.device)
    for start in range(0, rows.shape[1], _SUM_ROWS):
        out += rows[:, start : start + _SUM_ROWS].double().sum(-2)
    return out


def sinks_of(received: Float[Tensor, "head P"], threshold: float) -> SinkMask:
    """``hidden_sinks`` from each key's attention summed over the prompt rows that see it
    (float64, ``[head, P]``): key ``j``'s mean over rows ``j .. P-1`` above ``threshold``."""
    p = received.shape[-1]
    seen_by = torch.arange(p, 0, -1, device=received.device, dtype=torch.float64)  # rows j .. P-1
    sinks = received / seen_by > threshold
    sinks[:, 0] = False
    return sinks


def calibrate_sinks_(pattern: Pattern, sinks: SinkMask, beta: float, *, heads: Tensor | None = None) -> Tensor:
    """Damp the ``sinks`` keys of every row by ``beta`` and give the freed mass to the row's other
    keys in proportion to their weights, in place on ``pattern`` ``[1, head, q, k]`` (keys from
    the sequence's first token; ``sinks`` ``[edited heads, <= k]``). Rows with no weight off the
    sinks are left as they are (nothing to give the mass to). Arithmetic in float32, the row masses
    summed in float64 (the same factors for a block of query rows as for the whole pattern).

    Returns:
        The total-variation shift ``[head, rows]`` of each edited row.
    """
    rows = pattern[0] if heads is None else pattern[0, heads]
    work = rows.float()  # ``rows`` itself for float32 and all heads: edited in place
    mask = torch.zeros(work.shape[0], work.shape[-1], dtype=torch.bool, device=work.device)
    width = min(sinks.shape[-1], work.shape[-1])
    mask[:, :width] = sinks[:, :width].to(work.device)
    # each row's mass on the sinks and off them [head, rows, 2], summed in float64 a head at a
    # time: rounded to float32, the sums do not depend on how many zero keys past the row the
    # pattern holds, so a block of query rows (chunked attention) gets the whole pattern's
    # factors (a float32 product adds the keys in an order that depends on their number, on
    # some CPUs' kernels)
    split = torch.stack((mask, ~mask), dim=-1).double()  # [head, keys, 2]
    masses = torch.stack([(work[h].double() @ split[h]).float() for h in range(work.shape[0])])
    sink_mass, other_mass = masses[..., 0], masses[..., 1]
    given = other_mass > 0  # rows with somewhere to give the freed mass
    factor = torch.where(given, 1.0 + (1.0 - beta) * sink_mass / other_mass.clamp_min(torch.finfo(torch.float32).tiny),
                         torch.ones_like(other_mass))
    for h in range(work.shape[0]):
        keys = mask[h].nonzero().flatten()
        if not keys.numel():
            continue  # no hidden sink: the head's rows stay as they are
        kept = work[h][:, keys].clone()
        work[h].mul_(factor[h][:, None])
        work[h][:, keys] = torch.where(given[h][:, None], beta * kept, kept)
    # the total-variation shift in closed form: the sinks lose (1 - beta) S, the other keys gain it
    shift = torch.where(given, (1.0 - beta) * sink_mass, torch.zeros_like(sink_mass))
    if work is not rows or heads is not None:
        if heads is None:
            pattern[0] = work.to(pattern.dtype)
        else:
            pattern[0, heads] = work.to(pattern.dtype)
    return shift


def _sum_received(measured: dict[int, dict[int, Tensor]], layer: int, lengths: list[int] | None,
                  pattern: Tensor, block: QueryBlock) -> None:
    """A pre-pass reader: add one block's attention ``[batch, head, rows, keys]`` over each
    sequence's prompt rows to its keys' sums (``column_sums``, ``[head, P]`` in the sequence's
    own coordinates, ``P`` its prompt length: the hooks' ``prompt_lengths``, else all its tokens).

    Raises:
        ValueError: a mask that is not left padding, or ``prompt_lengths`` that do not fit the pass.
    """
    if block.padding is None:
        raise ValueError("the attention mask is not left padding: pad on the left (tokenizer.padding_side = 'left')")
    if lengths is not None:
        check_lengths_fit(lengths, block.padding, block.total_keys)
    if block.first:
        measured[layer] = {}
    sums = measured[layer]
    for b, off in enumerate(block.padding):
        p = lengths[b] if lengths is not None else block.total_keys - off
        lo, hi = max(block.start, off), min(block.end, off + p)  # the block's rows of the prompt
        if b not in sums:
            sums[b] = torch.zeros(pattern.shape[1], p, dtype=torch.float64, device=pattern.device)
        if hi > lo:
            width = min(p, block.keys - off)
            sums[b][:, :width] += column_sums(pattern[b, :, lo - block.start : hi - block.start, off : off + width])


def placebo_sinks(sinks: SinkMask, seed: int, layer: int, prompt_ids: Sequence[int] | Tensor,
                  heads: Sequence[int] | None = None) -> SinkMask:
    """As many random keys per head as ``sinks`` marks, among keys ``1 .. P-1`` that are not
    hidden sinks (all of them when there are fewer), drawn per ``(seed, layer, head, document)``:
    ``[head, P]``. ``heads``: the query head of each row of ``sinks`` (None: ``0, 1, ..``)."""
    digest = prompt_digest(prompt_ids)
    out = torch.zeros_like(sinks)
    for row, head in enumerate(range(sinks.shape[0]) if heads is None else heads):
        count = int(sinks[row].sum())
        if not count:
            continue
        candidates = (~sinks[row]).nonzero().flatten()
        candidates = candidates[candidates > 0]
        gen = draw_generator(seed, "sink-calibration-keys", layer, int(head), digest)
        out[row, candidates[torch.randperm(candidates.numel(), generator=gen)[:count]]] = True
    return out


@dataclass(frozen=True)
class SinkCalibration(AttentionEdit):
    """ACT's calibration of hidden attention sinks on chosen heads (post-softmax, every pass;
    module docstring).

    Args:
        head_config: ``{layer: query heads}`` to calibrate (GQA: ``resolve_heads``; the authors'
            heads come from a search, one head calibrated at a time: ``at_probe.interventions.profiling``); ``None``: every head of
            ``layers``.
        layers: with no ``head_config``, the layers whose heads are all calibrated; ``None``
            (default): ``2 .. L-2``, the authors' layers.
        beta: the hidden sinks' factor, in ``[0, 1]``; default 0.4, the authors'.
        threshold: mean received attention above which a key is a hidden sink, in ``(0, 1)``;
            default 0.1, the authors'.
        placebo_seed: if set, damp random keys instead (``placebo_sinks``); needs the prompts.

    Raises:
        ChunkedAttentionError: (at run time) a prompt's rows of a layer seen in parts without
            their pre-pass (hooks registered by hand without the ``ln1.hook_out`` pairs).
    """

    head_config: Mapping[int, Sequence[int]] | None = None
    layers: tuple[int, ...] | None = None
    beta: float = 0.4
    threshold: float = 0.1
    placebo_seed: int | None = None

    stage: ClassVar[str] = "pattern"

    def __post_init__(self) -> None:
        """Raises ValueError naming ``beta``, ``threshold``, ``head_config`` or ``placebo_seed``."""
        for name, lo, hi, closed in (("beta", 0.0, 1.0, True), ("threshold", 0.0, 1.0, False)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not (lo <= value <= hi if closed else lo < value < hi):
                bounds = f"[{lo:g}, {hi:g}]" if closed else f"({lo:g}, {hi:g})"
                raise ValueError(f"{name} must be a finite number in {bounds}, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.head_config is not None:
            object.__setattr__(self, "head_config", checked_head_config(self.head_config))
        if self.layers is not None:
            if self.head_config is not None:
                raise ValueError("give head_config or layers, not both")
            object.__setattr__(self, "layers", int_tuple("layers", self.layers))
        if self.placebo_seed is not None:
            object.__setattr__(self, "placebo_seed", int_tuple("placebo_seed", [self.placebo_seed])[0])

    def __hash__(self) -> int:
        config = None if self.head_config is None else tuple(self.head_config.items())
        return hash((config, self.layers, self.beta, self.threshold, self.placebo_seed))

    @property
    def needs_prompts(self) -> bool:  # type: ignore[override]  # the placebo draws per document
        return self.placebo_seed is not None

    def hooks(self, model: Any, *, prompt_lengths: Sequence[int] | int | None = None,
              prompts: Sequence[Prompt] | None = None) -> list[HookPair]:
        """``AttentionEdit.hooks``, and per calibrated layer ``ln1.hook_out`` (under chunked
        attention, asks for the layer's pre-pass; module docstring) and a second scores hook (hands
        the pre-pass's sums to the prompt's memory once the pass is known to start a prompt)."""
        pairs = super().hooks(model, prompt_lengths=prompt_lengths, prompts=prompts)
        run = self._last_run
        measured: dict[int, dict[int, Tensor]] = {}  # this pass's pre-pass: layer -> sequence -> sums [head, P]

        def request(layer: int) -> Any:
            def fn(hidden: Tensor, *, hook: Any) -> None:
                measured.pop(layer, None)  # sums belong to the pass that measured them
                chunks = chunking(model)
                if chunks is None or hidden.shape[1] <= chunks.rows:
                    return
                known = [("sinks", layer) in run.memory.get(b, {}) for b in range(hidden.shape[0])]
                if run.pass_decided and all(known):  # a later pass of a prompt whose sinks are found
                    return
                request_prepass(model, layer, partial(_sum_received, measured, layer, run.fixed_lengths),
                                owner=measured)
            return fn

        def hand_over(layer: int) -> Any:
            def fn(scores: Tensor, *, hook: Any) -> None:  # after the base's scores hook decided the prompt
                for b, sums in measured.pop(layer, {}).items():
                    run.memory.setdefault(b, {})[("prepass", layer)] = sums
            return fn

        layers = list(self._layer_heads(int(model.cfg.n_layers), int(model.cfg.n_heads)))
        return (pairs + [(f"blocks.{layer}.ln1.hook_out", request(layer)) for layer in layers]
                + [(scores_hook(layer), hand_over(layer)) for layer in layers])

    def _layer_heads(self, n_layers: int, n_heads: int) -> dict[int, Tensor | None]:
        if self.head_config is None:
            layers = profiled_layers(n_layers) if self.layers is None else resolve_layers(self.layers, range(n_layers))
            return {layer: None for layer in layers}
        return config_heads(self.head_config, n_layers, n_heads)

    def sinks(self, seq: Tensor, layer: int, heads: Tensor | None, view: SequenceView) -> SinkMask:
        """The keys this edit damps in one sequence's ``layer``: found at the prompt's prefill
        (kept in ``view.memory`` for the prompt's later passes); the placebo's random keys."""
        key = ("sinks", layer)
        if key not in view.memory:
            p = view.prompt_length
            summed = view.memory.pop(("prepass", layer), None)  # this pass's pre-pass, if it ran one
            if summed is not None and view.query_start == 0 and summed.shape[-1] == p:
                found = sinks_of(summed if heads is None else summed[heads.to(summed.device)], self.threshold)
            elif view.query_start == 0 and seq.shape[-2] >= p:  # every prompt row at hand
                found = hidden_sinks(seq[0] if heads is None else seq[0, heads], p, self.threshold)
            else:
                raise ChunkedAttentionError(
                    f"SinkCalibration needs the prompt's {p} rows of layer {layer} in one pass or a pre-pass (got "
                    f"rows {view.query_start}..{view.query_start + seq.shape[-2] - 1}): {_WHY_WHOLE}; register "
                    "every pair .hooks(model) returns, and a decode step needs its prompt's prefill under them")
            if self.placebo_seed is not None:
                assert view.prompt is not None  # needs_prompts: hooks() refuses to build without them
                ids = None if heads is None else heads.tolist()
                found = placebo_sinks(found, self.placebo_seed, layer, view.prompt.ids, ids)
            view.memory[key] = found
        return view.memory[key]

    def _edit_(self, seq: Tensor, layer: int, heads: Tensor | None, view: SequenceView) -> tuple[int, Tensor]:
        sinks = self.sinks(seq, layer, heads, view)
        return seq.shape[-2], calibrate_sinks_(seq, sinks, self.beta, heads=heads)


# ---------------------------------------------------------------------------------------------
# Head search and settings (``at_probe.interventions.registry``)
# ---------------------------------------------------------------------------------------------

PROFILE_RANKING = "calibration"
"""The name of ACT's head search in a selection's ``profiles["sink_head_ranking"]``: each head of
the default layers (``2 .. L-2``) calibrated alone with the default beta and threshold on
development documents (``at_probe.interventions.profiling``; the authors search by accuracy)."""


def profiled_layers(n_layers: int) -> tuple[int, ...]:
    """The layers ACT searches and calibrates by default: ``2 .. L-2``."""
    return tuple(range(2, n_layers - 1))


def _top_args(rankings: Mapping[str, Any] | None, values: Mapping[str, Any]) -> dict[str, Any]:
    """With ``top``: the ``top`` best heads of the ``calibration`` ranking as ``head_config``."""
    return top_head_config(rankings, PROFILE_RANKING, values)


# ``sink_calibration:beta=0.4,threshold=0.1`` (every head of layers 2..L-2), ``...,top=4`` (the
# profile's best 4 heads) and the placebo of each
_SINK_CALIBRATION_KEYS = {"beta": Key(float), "threshold": Key(float),
                          "layers": Key(layer_range, show=show_layer_range), "top": Key(int, field=None)}
_SINK_PROFILE = {"profile": "sink_head_ranking", "profile_args": _top_args,
                 "profile_when": lambda values: "top" in values}
register(Method("sink_calibration", SinkCalibration, _SINK_CALIBRATION_KEYS,
                summary="ACT calibration: hidden sinks damped by beta, their mass given back (SinkCalibration)",
                placebo=Placebo("sink_calibration_placebo"), **_SINK_PROFILE))
register(Method("sink_calibration_placebo", SinkCalibration,
                {**_SINK_CALIBRATION_KEYS, "seed": Key(int, field="placebo_seed", default=PLACEBO_SEED)},
                summary="the same damping of as many random keys per head", **_SINK_PROFILE))
