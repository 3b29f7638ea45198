"""Adaptive temperature (Veličković et al., "Softmax is not enough", arXiv 2410.01104): each
attention row sharpened by an inverse temperature read off its own entropy, with no tuning.

For each query row of each chosen head, the entropy ``H`` (nats) of its softmax gives
``beta = max(poly(H), 1)`` when ``H > 0.5`` and ``beta = 1`` otherwise, with the authors' fitted
quartic ``poly(H) = -0.037 H^4 + 0.481 H^3 - 2.3 H^2 + 4.917 H - 1.791``; the row's scores are then
multiplied by ``beta`` before the softmax, so a row is only ever sharpened, never flattened (the
paper's ``adaptive_temperature_softmax``, its Figure 4). ``poly`` is above 1 only for ``H`` between
about 0.85 and 5.94 nats: ``beta`` is about 1.27 at ``H = 1`` and 2.1-2.3 for ``H`` between 2 and
5, and the most diffuse rows (above 5.94 nats, a uniform row over some 380 keys, common at long
context) keep ``beta = 1``: the fit covers the entropies of the authors' task, not these.
``last_report()`` counts as edited the rows whose ``beta`` is above 1.

The paper uses it as a drop-in softmax everywhere, so the default is every head of every layer,
at every pass (prefill and decode steps). Each row depends on its own scores only, so left
padding, the KV cache and chunked attention need nothing special. It has no target (no span,
no key), so it has no placebo: its control is the fixed temperature (``AttentionTemperature``),
which asks whether adapting per row beats sharpening every row alike.

Example:
    >>> from at_probe.interventions.adaptive_temperature import AdaptiveTemperature
    >>> with AdaptiveTemperature().applied(model), torch.inference_mode():
    ...     logits = model(tokens)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

from at_probe.interventions.base import AttentionEdit, SequenceView, int_tuple, resolve_heads
from at_probe.interventions.registry import Key, Method, layer_range, register, show_layer_range
from at_probe.models.names import resolve_layers

Scores = Float[Tensor, "batch head query_pos key_pos"]

POLY = (-0.037, 0.481, -2.3, 4.917, -1.791)
"""The fitted inverse temperature as a polynomial of the row entropy, highest power first."""
MIN_ENTROPY = 0.5
"""Rows at or below this entropy (nats) keep ``beta = 1`` ("don't overcorrect low-entropy heads")."""


def adaptive_beta(scores: Tensor) -> Tensor:
    """Each row's inverse temperature ``[..., rows, 1]`` from its scores ``[..., rows, keys]``
    (masked entries hold at most half the dtype's minimum: their weight is 0), in float32."""
    p = torch.softmax(scores.float(), dim=-1)
    entropy = -p.add(1e-9).log_().mul_(p).sum(-1, keepdim=True)  # one temporary, as -sum p log(p + 1e-9)
    poly = torch.zeros_like(entropy)
    for c in POLY:  # Horner's rule, highest power first, as numpy's polyval
        poly = poly * entropy + c
    return torch.where(entropy > MIN_ENTROPY, poly.clamp_min(1.0), torch.ones_like(poly))


def temper_adaptively_(scores: Scores, heads: Tensor | None = None) -> Tensor:
    """Multiply each row of ``heads`` (None: all) by its ``adaptive_beta``, in place. Masked
    entries stay masked: at most half the dtype's minimum times ``beta >= 1`` is at most that
    still (or ``-inf``, which the softmax also gives weight 0).

    Returns:
        The inverse temperature of each edited row ``[batch, head, rows]``.
    """
    view = scores if heads is None else scores[:, heads]
    beta = adaptive_beta(view)
    if heads is None and scores.dtype == torch.float32:
        scores.mul_(beta)
    elif heads is None:
        scores.copy_((scores.float() * beta).to(scores.dtype))
    else:
        scores[:, heads] = (view.float() * beta).to(scores.dtype)
    return beta[..., 0]


@dataclass(frozen=True)
class AdaptiveTemperature(AttentionEdit):
    """Each row's scores multiplied by the inverse temperature its entropy gives (pre-softmax,
    every pass; module docstring).

    Args:
        layers: layers to edit; ``None`` (default, the paper's drop-in use): every layer.
        heads: query heads to edit in each of them (GQA: ``at_probe.interventions.base.resolve_heads``);
            ``None``: all.
    """

    layers: tuple[int, ...] | None = None
    heads: tuple[int, ...] | None = None

    stage: ClassVar[str] = "scores"

    def __post_init__(self) -> None:
        """Raises ValueError naming ``layers`` or ``heads`` (not integers)."""
        for name in ("layers", "heads"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, int_tuple(name, getattr(self, name)))

    def _layer_heads(self, n_layers: int, n_heads: int) -> dict[int, Tensor | None]:
        layers = range(n_layers) if self.layers is None else resolve_layers(self.layers, range(n_layers))
        heads = resolve_heads(self.heads, n_heads)
        return {layer: heads for layer in layers}

    def _edit_(self, seq: Tensor, layer: int, heads: Tensor | None, view: SequenceView) -> tuple[int, None]:
        beta = temper_adaptively_(seq, heads)  # [1, head, rows]
        return int((beta > 1).any(dim=1).sum()), None  # rows sharpened on some head


# ``adaptive_temperature:`` (every layer) or ``adaptive_temperature:layers=15-29``; no target, no placebo
register(Method("adaptive_temperature", AdaptiveTemperature,
                {"layers": Key(layer_range, show=show_layer_range)},
                summary="each row's scores times the inverse temperature of its entropy (AdaptiveTemperature)"))
