"""ZeroTuning-style sink scaling (Han et al., 2025): the attention on the first token scaled by a
rate, every row renormalised.

On each chosen head, every query row's post-softmax weight on the sequence's first token (key 0,
the attention sink; under left padding each sequence's own first real token) is multiplied by
``rate`` and the row is divided by its new sum, so the other keys share what the sink gains or
loses in proportion to their weights: ``a'_0 = rate a_0 / D``, ``a'_j = a_j / D``, ``D = sum_j a_j
+ (rate - 1) a_0``. As in the authors' code (``FeijiangHan/ZeroTuning``, ``ZeroTuning_Attention``:
a scale matrix on column 0, then rows divided by their sums), it edits every query row at every
pass (prefill and each decode step). For a softmax row this is adding ``log(rate)`` to the
sink's score.

ZeroTuning is close to the sink part of the paper transition (``PaperTransition(parts=("sink",))``
halves column 0 of its span rows), but renormalises, edits every row, and takes any rate.

The placebo (``placebo_seed``) scales one random key of the prompt other than the sink instead,
drawn per document from its token ids (``at_probe.runs.seeding``), the same key in every layer:
the control for "is it the sink, or scaling any one token's attention".

Example:
    >>> from at_probe.interventions.sink_scaling import SinkScaling
    >>> edit = SinkScaling(rate=2.0)                       # every head of every layer
    >>> with edit.applied(model), torch.inference_mode():
    ...     logits = model(tokens)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

from at_probe.interventions.base import (
    AttentionEdit,
    SequenceView,
    checked_head_config,
    config_heads,
    int_tuple,
    resolve_heads,
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
from at_probe.models.names import resolve_layers
from at_probe.runs.seeding import draw_generator, prompt_digest

Pattern = Float[Tensor, "batch head query_pos key_pos"]

MAX_RATE = 1e6
"""Largest rate accepted: the sink already takes every row whole long before (a row with sink
weight ``1e-6`` ends with about half of it on the sink), and larger rates only lose the other
keys' weights to float32 rounding."""


def scale_column_(pattern: Pattern, column: int, rate: float, *, first_row: int = 0,
                  heads: Tensor | None = None) -> Tensor:
    """Multiply key ``column`` of rows ``first_row ..`` by ``rate`` and renormalise each row to sum 1.

    In place on ``pattern`` ``[1, head, q, k]`` (one sequence, keys from its position 0), arithmetic
    in float32. A row with no weight at all stays zero.

    Args:
        column: the key to scale (0: the sink).
        rate: the factor, ``> 0``.
        first_row: first row (within ``pattern``) to edit: rows before it cannot see the key.
        heads: heads to edit (None: all).

    Returns:
        The total-variation shift ``[head, rows]`` of each edited row (empty if none).
    """
    if first_row >= pattern.shape[-2] or column >= pattern.shape[-1]:
        return pattern.new_zeros(0)
    rows = pattern[0, :, first_row:] if heads is None else pattern[0, heads, first_row:]
    work = rows.float()  # ``rows`` itself for float32 and all heads: edited in place
    key = work[..., column].clone()  # [head, rows]
    total = work.sum(-1)
    denom = (total + (rate - 1.0) * key).clamp_min(torch.finfo(torch.float32).tiny)
    work.div_(denom[..., None])
    work[..., column] = rate * key / denom
    # the total-variation shift in closed form: the key moves by |a'_c - a_c|, every other key by a_j |1/D - 1|
    shift = 0.5 * ((work[..., column] - key).abs() + (total - key) * (1.0 / denom - 1.0).abs())
    if work is not rows or heads is not None:
        if heads is None:
            pattern[0, :, first_row:] = work.to(pattern.dtype)
        else:
            pattern[0, heads, first_row:] = work.to(pattern.dtype)
    return shift


def placebo_column(prompt_ids: Sequence[int] | Tensor, seed: int) -> int:
    """The placebo's key: uniform over the prompt's keys ``1 .. T - 1`` (never the sink), drawn
    per ``(seed, document)``.

    Raises:
        ValueError: a prompt of fewer than 2 tokens (no key but the sink).
    """
    n = len(prompt_ids)
    if n < 2:
        raise ValueError(f"a prompt of {n} token(s) has no key besides the sink for the placebo to scale")
    gen = draw_generator(seed, "sink-scaling-column", prompt_digest(prompt_ids))
    return 1 + int(torch.randint(0, n - 1, (1,), generator=gen))


@dataclass(frozen=True)
class SinkScaling(AttentionEdit):
    """The sink's attention scaled by ``rate`` on chosen layers and heads, rows renormalised
    (post-softmax, every row, every pass; module docstring).

    Args:
        rate: the sink's factor ``gamma``, finite, in ``(0, MAX_RATE]``; 1 changes nothing,
            above 1 strengthens the sink, below 1 weakens it (ZeroTuning tunes it per task).
        layers: layers to edit; ``None`` (default, as ZeroTuning's code): every layer.
        heads: query heads to edit in each of them (GQA: ``at_probe.interventions.base.resolve_heads``);
            ``None``: all.
        head_config: instead of ``layers`` and ``heads``, ``{layer: query heads}`` (e.g. the best
            heads of a profiling: ``at_probe.interventions.profiling``).
        placebo_seed: if set, scale one random non-sink key of each prompt instead
            (``placebo_column``); the placebo then needs the prompts (``hooks(model, prompts=...)``).
    """

    rate: float = 1.0
    layers: tuple[int, ...] | None = None
    heads: tuple[int, ...] | None = None
    placebo_seed: int | None = None
    head_config: Mapping[int, Sequence[int]] | None = None

    stage: ClassVar[str] = "pattern"

    def __post_init__(self) -> None:
        """Raises ValueError naming ``rate`` (not a finite number in ``(0, MAX_RATE]``), ``layers``,
        ``heads``, ``head_config`` or ``placebo_seed`` (not integers; ``head_config`` with
        ``layers`` or ``heads``)."""
        rate = self.rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) \
                or not 0 < rate <= MAX_RATE:
            raise ValueError(f"rate must be a finite number in (0, {MAX_RATE:g}] (0 would leave a row that "
                             f"sees only the sink with no weight), got {rate!r}")
        object.__setattr__(self, "rate", float(rate))
        for name in ("layers", "heads"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, int_tuple(name, getattr(self, name)))
        if self.placebo_seed is not None:
            object.__setattr__(self, "placebo_seed", int_tuple("placebo_seed", [self.placebo_seed])[0])
        if self.head_config is not None:
            if self.layers is not None or self.heads is not None:
                raise ValueError("give head_config, or layers and heads, not both")
            object.__setattr__(self, "head_config", checked_head_config(self.head_config))

    def __hash__(self) -> int:
        config = None if self.head_config is None else tuple(self.head_config.items())
        return hash((self.rate, self.layers, self.heads, self.placebo_seed, config))

    @property
    def needs_prompts(self) -> bool:  # type: ignore[override]  # the placebo draws per document
        return self.placebo_seed is not None

    def column(self, view: SequenceView) -> int:
        """The key this edit scales for one sequence: the sink, or the placebo's draw (drawn
        once per prompt, kept in ``view.memory``)."""
        if self.placebo_seed is None:
            return 0
        if "column" not in view.memory:
            assert view.prompt is not None  # needs_prompts: hooks() refuses to build without them
            view.memory["column"] = placebo_column(view.prompt.ids, self.placebo_seed)
        return view.memory["column"]

    def _layer_heads(self, n_layers: int, n_heads: int) -> dict[int, Tensor | None]:
        if self.head_config is not None:
            return config_heads(self.head_config, n_layers, n_heads)
        layers = range(n_layers) if self.layers is None else resolve_layers(self.layers, range(n_layers))
        heads = resolve_heads(self.heads, n_heads)
        return {layer: heads for layer in layers}

    def _edit_(self, seq: Tensor, layer: int, heads: Tensor | None, view: SequenceView) -> tuple[int, Tensor]:
        column = self.column(view)
        first_row = max(0, column - view.query_start)
        shift = scale_column_(seq, column, self.rate, first_row=first_row, heads=heads)
        return max(0, seq.shape[-2] - first_row), shift


# ---------------------------------------------------------------------------------------------
# Head search and settings (``at_probe.interventions.registry``)
# ---------------------------------------------------------------------------------------------

PROFILE_RATES: dict[str, float] = {"scale_down": 0.5, "scale_up": 2.0}
"""The head profilings of sink scaling: each head alone scaled by this rate on development
documents (``at_probe.interventions.profiling``), one ranking per direction, kept under these
names in a selection's ``profiles["sink_head_ranking"]``. ZeroTuning picks its heads by hand,
per task, in either direction; a setting with ``top`` takes the ranking of its rate's direction."""


def ranking_name(rate: float) -> str:
    """The profiling whose ranking a setting of this rate uses (``PROFILE_RATES``)."""
    down, up = PROFILE_RATES  # the names, in the order of their rates (below 1, above 1)
    return down if rate < 1 else up


def _top_args(rankings: Mapping[str, Any] | None, values: Mapping[str, Any]) -> dict[str, Any]:
    """With ``top``: the ``top`` best heads of the ranking of the rate's direction as ``head_config``."""
    return top_head_config(rankings, ranking_name(values["rate"]), values)


# ``sink_scaling:rate=2`` (every head), ``sink_scaling:rate=0.5,top=4`` (the profile's best 4) and
# the placebo of each
_SINK_SCALING_KEYS = {"rate": Key(float, required=True), "layers": Key(layer_range, show=show_layer_range),
                      "top": Key(int, field=None)}
_SINK_PROFILE = {"profile": "sink_head_ranking", "profile_args": _top_args,
                 "profile_when": lambda values: "top" in values}
register(Method("sink_scaling", SinkScaling, _SINK_SCALING_KEYS,
                summary="ZeroTuning sink scaling: the sink's attention times rate, rows renormalised (SinkScaling)",
                placebo=Placebo("sink_scaling_placebo"), **_SINK_PROFILE))
register(Method("sink_scaling_placebo", SinkScaling,
                {**_SINK_SCALING_KEYS, "seed": Key(int, field="placebo_seed", default=PLACEBO_SEED)},
                summary="the same scaling of one random non-sink key per document", **_SINK_PROFILE))
