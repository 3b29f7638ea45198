"""Attention temperature: the pre-softmax scores of chosen layers divided by ``tau``.

The simplest attention knob: ``tau < 1`` sharpens every row of the chosen heads, ``tau > 1``
flattens it. It has no target (no span, no position), so it has no placebo. Applied at every
forward pass, prefill and decode steps alike.

Example:
    >>> from at_probe.interventions.temperature import AttentionTemperature
    >>> edit = AttentionTemperature(tau=0.8)               # the last half of the layers
    >>> with edit.applied(model), torch.inference_mode():
    ...     logits = model(tokens)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

from at_probe.interventions.base import AttentionEdit, SequenceView, int_tuple, last_half, resolve_heads
from at_probe.interventions.registry import Key, Method, layer_range, register, show_layer_range
from at_probe.models.names import resolve_layers

Scores = Float[Tensor, "batch head query_pos key_pos"]

MIN_TAU = 1e-3
"""Smallest temperature accepted.

The edit multiplies every unmasked score by ``1 / tau``, so a tiny ``tau`` overflows: at
``tau = 1e-38`` any score above 3.4 becomes ``inf`` in float32 and bfloat16, and the softmax of
a row holding ``inf`` is NaN, so every logit is NaN. At ``1e-3`` the softmax is already a hard
argmax (scores 0.01 apart end e^10 apart), so smaller values add nothing but overflow, and the
scores are scaled by at most 1e3: scores of any trained model (a few hundred at most) stay
finite in float32 and bfloat16 with over 30 orders of magnitude to spare. (In float16, whose
range ends at 65504, scores above 65 would still overflow at this ``tau``.)
"""

_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def temper_scores_(scores: Scores, tau: float, heads: Tensor | None = None) -> Scores:
    """Divide the unmasked scores of ``heads`` (None: all) by ``tau``, in place; returns ``scores``.

    Masked entries (at most half the dtype's minimum, as the attention mask writes them) stay
    masked whatever ``tau`` is.
    """
    view = scores if heads is None else scores[:, heads]
    masked = view <= torch.finfo(view.dtype).min / 2
    tempered = torch.where(masked, view, view / tau)
    if heads is None:
        scores.copy_(tempered)
    else:
        scores[:, heads] = tempered
    return scores


def temper_scores(scores: Scores, tau: float, heads: Tensor | None = None) -> Scores:
    """``temper_scores_`` on a copy: the input is untouched."""
    return temper_scores_(scores.clone(), tau, heads)


@dataclass(frozen=True)
class AttentionTemperature(AttentionEdit):
    """Scores of chosen layers and heads divided by ``tau`` (pre-softmax, every pass).

    Args:
        tau: temperature, finite, in ``[MIN_TAU, float32 max]``; the default 1 changes nothing.
        layers: layers to edit; ``None`` (default, ours): the last half (``L // 2 .. L - 1``).
        heads: query heads to edit in each of them (GQA: ``at_probe.interventions.base.resolve_heads``);
            ``None``: all.
    """

    tau: float = 1.0
    layers: tuple[int, ...] | None = None
    heads: tuple[int, ...] | None = None

    stage: ClassVar[str] = "scores"

    def __post_init__(self) -> None:
        """Raises ValueError naming ``tau`` for a non-number, NaN, infinity, or a value outside
        ``[MIN_TAU, float32 max]`` (above it ``tau`` itself is ``inf`` in float32)."""
        tau = self.tau
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau):
            raise ValueError(f"tau must be a finite number, got {tau!r}")
        if not MIN_TAU <= tau <= _FLOAT32_MAX:
            raise ValueError(f"tau must be in [{MIN_TAU:g}, {_FLOAT32_MAX:.3g}] (MIN_TAU: below it the "
                             f"scores overflow to inf, hence NaN logits), got {tau!r}")
        object.__setattr__(self, "tau", float(tau))
        for name in ("layers", "heads"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, int_tuple(name, value))

    def _layer_heads(self, n_layers: int, n_heads: int) -> dict[int, Tensor | None]:
        layers = last_half(n_layers) if self.layers is None else resolve_layers(self.layers, range(n_layers))
        heads = resolve_heads(self.heads, n_heads)
        return {layer: heads for layer in layers}

    def _edit_(self, seq: Tensor, layer: int, heads: Tensor | None, view: SequenceView) -> tuple[int, None]:
        temper_scores_(seq, self.tau, heads)
        return seq.shape[-2], None


# ``temperature:tau=0.8,layers=15-29`` (``at_probe.interventions.registry``); no target, so no placebo
register(Method("temperature", AttentionTemperature,
                {"tau": Key(float, required=True), "layers": Key(layer_range, show=show_layer_range)},
                summary="scores of layers A-B (default the last half) divided by tau (AttentionTemperature)"))
