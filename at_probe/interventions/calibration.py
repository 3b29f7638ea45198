"""Position-bias calibration, Found-in-the-Middle style (Hsieh et al., 2024), for one document.

Found in the Middle measures how much attention a passage gets *because of where it sits*
and rescales attention by removing that bias, on the last half of the layers. Here, with one
document per prompt, the bias is a per-layer profile over ``R`` equal regions of the document:
the attention density (mass per token) that the final prompt token gives each region, averaged
over development documents, where content averages out and position remains
(``estimate_position_bias``). Calibration multiplies the attention of the rows after the
document (the instruction, and every generated token) on document keys of region ``r`` by
``bias[r] ** -strength`` and rescales those keys so each row's total document mass is unchanged
(mass-conserving: it redistributes attention within the document, never onto or off it).

The placebo (``placebo_seed``) applies the same weights shuffled across regions (a seeded
permutation per document and layer, so the bootstrap over documents sees the draws vary):
the same set of weights, aimed at no position in particular.

Example:
    >>> from at_probe.interventions.calibration import PositionCalibration, estimate_position_bias
    >>> bias = estimate_position_bias(model, dev_prompts)   # 8 regions (DEFAULT_REGIONS)
    >>> calib = PositionCalibration(bias=bias, strength=1.0)      # the last half of the layers
    >>> with calib.applied(model, prompts=[prompt]), torch.inference_mode():
    ...     out = model.generate(prompt.tensor(), max_new_tokens=50, do_sample=False, verbose=False)
"""

from __future__ import annotations

import math
import numbers
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from at_probe.flow.probe import DEFAULT_REGIONS
from at_probe.interventions.base import AttentionEdit, SequenceView, int_tuple, last_half, resolve_heads
from at_probe.interventions.registry import (
    PLACEBO_SEED,
    Key,
    Method,
    Placebo,
    layer_range,
    register,
    show_layer_range,
)
from at_probe.interventions.transition_ops import Pattern
from at_probe.models.names import resolve_layers

if TYPE_CHECKING:
    from at_probe.models.prompts import Prompt

Span = tuple[int, int]


def document_region_bounds(document: Span, regions: int) -> list[int]:
    """``[b_0, ..., b_R]`` token bounds of a document's ``regions`` near-equal regions.

    The same split as the flow probe's ``prompt_regions`` (token 0, the sink, never counts).
    """
    start, end = document
    first = max(start, 1)
    if end - first < regions:
        raise ValueError(f"document tokens [{start}, {end}) cannot be split into {regions} regions")
    return torch.linspace(first, end, regions + 1).round().long().tolist()


def calibrate_rows_(
    pattern: Pattern, document: Span, weights: Tensor, *, first_row: int, heads: Tensor | None = None
) -> Tensor:
    """Reweight the document keys of rows ``first_row ..`` by region, conserving document mass.

    In place on ``pattern`` ``[1, head, q, k]`` (one sequence, keys from its position 0, query
    row ``i`` at position ``query_start + i``; ``first_row`` is the first row to edit). For each
    edited row ``a``: ``a'_k = a_k w_r(k) * D / sum_j a_j w_r(j)`` over document keys, with ``D``
    the row's document mass; other keys are untouched, so the row sum is unchanged. Arithmetic
    in float32.

    Args:
        document: ``[start, end)`` document tokens.
        weights: ``[R]`` positive weight per document region.
        first_row: index (within ``pattern``) of the first row to edit.
        heads: heads to edit (None: all).

    Returns:
        The total-variation shift ``[head, rows]`` of each edited row (empty if none).
    """
    bounds = document_region_bounds(document, weights.numel())
    lo, hi = bounds[0], min(bounds[-1], pattern.shape[-1])
    if first_row >= pattern.shape[-2] or hi <= lo:
        return pattern.new_zeros(0)
    key_weights = torch.repeat_interleave(weights.float(), torch.tensor(bounds).diff())[: hi - lo]
    rows = pattern[0, :, first_row:, lo:hi] if heads is None else pattern[0, heads, first_row:, lo:hi]
    before = rows.float()
    mass = before.sum(-1, keepdim=True)
    scaled = before * key_weights.to(before.device)
    after = scaled * (mass / scaled.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny))
    shift = 0.5 * (after - before).abs().sum(-1)  # before writing: ``before`` may share the storage
    if heads is None:
        pattern[0, :, first_row:, lo:hi] = after.to(pattern.dtype)
    else:
        pattern[0, heads, first_row:, lo:hi] = after.to(pattern.dtype)
    return shift


@dataclass(frozen=True)
class PositionBias:
    """Relative attention density per layer and document region (mean 1 over regions).

    Attributes:
        density: ``[layer][region]``: how much more (> 1) or less (< 1) attention per token the
            final prompt token gives each region of the document than the document's average.
        n_documents: documents averaged.
    """

    density: tuple[tuple[float, ...], ...]
    n_documents: int

    def __post_init__(self) -> None:
        """Raises ValueError naming ``density`` for an empty or ragged table, or a value that is
        not a finite number ``>= 0`` (a NaN or infinite density would make every calibrated logit
        NaN); zero is a valid measurement, refused only by ``PositionCalibration``."""
        rows = self.density
        if not rows or not all(len(r) for r in rows) or len({len(r) for r in rows}) != 1:
            raise ValueError("density must be a non-empty [layer][region] table with the same regions "
                             "in every layer")
        for layer, row in enumerate(rows):
            for region, value in enumerate(row):
                if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
                    math.isfinite(value) and value >= 0
                ):
                    raise ValueError(f"density[{layer}][{region}] must be a finite number >= 0, "
                                     f"got {value!r}")

    @property
    def regions(self) -> int:
        return len(self.density[0])

    def to_json(self) -> dict[str, Any]:
        return {"density": [list(r) for r in self.density], "n_documents": self.n_documents}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PositionBias:
        return cls(tuple(tuple(float(v) for v in row) for row in data["density"]), int(data["n_documents"]))


def position_bias_from_profiles(profiles: Sequence[Tensor]) -> PositionBias:
    """Average per-document density profiles ``[layer, region]`` (each normalised to mean 1 per
    layer, so every document weighs the same) into a ``PositionBias``.

    Raises:
        ValueError: no profiles, or profiles of different shapes.
    """
    if not profiles:
        raise ValueError("no documents to estimate the position bias from")
    stacked = torch.stack([p.float() for p in profiles])  # [doc, layer, region]
    normalised = stacked / stacked.mean(-1, keepdim=True).clamp_min(1e-12)
    mean = normalised.mean(0)
    return PositionBias(tuple(tuple(float(v) for v in row) for row in mean), len(profiles))


def estimate_position_bias(
    model: Any, prompts: Sequence[Prompt], *, regions: int = DEFAULT_REGIONS, progress: Callable[[int], None] | None = None
) -> PositionBias:
    """Estimate the position bias from development prompts (one unedited forward pass each).

    Per document, the flow probe's final-token mass on each document region (averaged over
    heads), divided by the region's token count, is that document's density profile; see
    ``position_bias_from_profiles``.
    """
    from at_probe.flow.probe import probe_pass

    profiles = []
    for prompt in prompts:
        result, _ = probe_pass(model, prompt, None, regions)
        doc = [i for i, label in enumerate(result.region_labels) if label.startswith("doc ")]
        sizes = result.region_bounds.diff()[doc].float()
        profiles.append(result.final_token_profile.mean(1)[:, doc] / sizes)
        if progress is not None:
            progress(1)
    return position_bias_from_profiles(profiles)


@dataclass(frozen=True)
class PositionCalibration(AttentionEdit):
    """Found-in-the-Middle-style calibration of attention over the document (post-softmax).

    Rows at or after the document's end (the instruction, the template tail and every generated
    token) are edited at every pass; rows inside the document are not.

    Args:
        bias: the ``PositionBias`` of the model (from development documents).
        strength: exponent ``s`` of the weights ``bias ** -s`` (0 changes nothing, 1, the
            default (ours), divides by the bias); finite, ``>= 0``, and small
            enough that every weight of every layer and region is in float32's normal range
            (``_check_weights``).
        layers: layers to calibrate; ``None`` (default, ours): the last half (``L // 2 .. L - 1``).
        heads: query heads to calibrate (GQA: ``at_probe.interventions.base.resolve_heads``); ``None``: all.
        placebo_seed: if set, the weights are shuffled across regions per document and layer
            (control).
    """

    bias: PositionBias
    strength: float = 1.0
    layers: tuple[int, ...] | None = None
    heads: tuple[int, ...] | None = None
    placebo_seed: int | None = None

    stage: ClassVar[str] = "pattern"
    needs_prompts: ClassVar[bool] = True

    def __post_init__(self) -> None:
        """Raises ValueError naming ``bias`` or ``strength`` (see the arguments)."""
        if not isinstance(self.bias, PositionBias):
            raise ValueError(f"bias must be a PositionBias, got {type(self.bias).__name__}")
        zero = [(l, r) for l, row in enumerate(self.bias.density) for r, v in enumerate(row) if v <= 0]
        if zero:
            raise ValueError(f"bias must be positive in every region (bias ** -strength divides by it); "
                             f"it is 0 at [layer, region] {zero[:4]}")
        if (
            isinstance(self.strength, bool)
            or not isinstance(self.strength, (int, float))
            or not math.isfinite(self.strength)
            or self.strength < 0
        ):
            raise ValueError(f"strength must be a finite number >= 0, got {self.strength!r}")
        object.__setattr__(self, "strength", float(self.strength))
        self._check_weights()
        for name in ("layers", "heads"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, int_tuple(name, getattr(self, name)))
        if self.placebo_seed is not None:
            object.__setattr__(self, "placebo_seed", int_tuple("placebo_seed", [self.placebo_seed])[0])

    def _check_weights(self) -> None:
        """Refuse a ``strength`` whose weights ``bias ** -strength`` leave float32's normal range
        ``[tiny, max]`` in any layer and region (e.g. strength 200 at density 0.6:
        ``0.6 ** -200 = 2e44``, ``inf`` in float32).

        This range is what ``calibrate_rows_`` needs to stay finite: a row's weighted document
        mass ``sum a_k w_k`` is at most ``max w`` (the row's mass is at most 1), and the rescaling
        factor ``D / sum a_k w_k`` at most ``1 / min w``, finite when ``min w >= tiny``; an
        ``inf`` weight gives ``inf / inf = NaN`` instead.

        Raises:
            ValueError: naming ``strength``, the layer, region and density that overflow.
        """
        limits = torch.finfo(torch.float32)
        density = torch.tensor(self.bias.density, dtype=torch.float64)
        w = density ** -self.strength
        bad = ~((w >= limits.tiny) & (w <= limits.max))
        if bad.any():
            layer, region = (int(i) for i in bad.nonzero()[0])
            raise ValueError(
                f"strength {self.strength:g} makes the weight bias ** -strength of layer {layer}, region "
                f"{region} (density {float(density[layer, region]):.3g}) {float(w[layer, region]):.3g}, "
                "outside float32's range: lower strength"
            )

    def weights(self, layer: int, prompt_ids: Sequence[int] = ()) -> Tensor:
        """``[R]`` weights of ``layer``: ``bias ** -strength``; for the placebo, shuffled by a
        permutation seeded by ``placebo_seed``, the layer and the prompt's token ids."""
        w = torch.tensor(self.bias.density[layer], dtype=torch.float64) ** -self.strength
        if self.placebo_seed is not None:
            digest = zlib.crc32(torch.tensor(list(prompt_ids), dtype=torch.int64).numpy().tobytes())
            gen = torch.Generator().manual_seed(self.placebo_seed * 1_000_003 + layer * 7_919 + digest)
            w = w[torch.randperm(w.numel(), generator=gen)]
        return w.float()

    def _layer_heads(self, n_layers: int, n_heads: int) -> dict[int, Tensor | None]:
        if len(self.bias.density) != n_layers:
            raise ValueError(
                f"the position bias has {len(self.bias.density)} layers; the model has {n_layers}"
            )
        layers = last_half(n_layers) if self.layers is None else resolve_layers(self.layers, range(n_layers))
        heads = resolve_heads(self.heads, n_heads)
        return {layer: heads for layer in layers}

    def _edit_(self, seq: Tensor, layer: int, heads: Tensor | None, view: SequenceView) -> tuple[int, Tensor]:
        assert view.prompt is not None  # needs_prompts: hooks() refuses to build without them
        document = view.prompt.document
        first_row = max(0, document[1] - view.query_start)
        weights = self.weights(layer, view.prompt.ids)
        shift = calibrate_rows_(seq, document, weights, first_row=first_row, heads=heads)
        return max(0, seq.shape[-2] - first_row), shift


# ---------------------------------------------------------------------------------------------
# Settings (``at_probe.interventions.registry``): ``calibration:strength=S,layers=A-B`` and its placebo
# ---------------------------------------------------------------------------------------------

def _bias_args(bias: dict[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """The development profile ``position_bias`` (``PositionBias.to_json()``) as the ``bias`` argument."""
    return {"bias": PositionBias.from_json(bias)}


_CALIBRATION_KEYS = {"strength": Key(float), "layers": Key(layer_range, show=show_layer_range)}
register(Method("calibration", PositionCalibration, _CALIBRATION_KEYS,
                summary="Found-in-the-Middle position calibration (PositionCalibration)",
                placebo=Placebo("calibration_placebo"), profile="position_bias", profile_args=_bias_args))
register(Method("calibration_placebo", PositionCalibration,
                {**_CALIBRATION_KEYS, "seed": Key(int, field="placebo_seed", default=PLACEBO_SEED)},
                summary="the calibration's weights shuffled across regions", profile="position_bias",
                profile_args=_bias_args))
