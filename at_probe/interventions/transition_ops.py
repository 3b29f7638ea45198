"""The exact arithmetic of Attention Transition, both versions (paper 2023, SRA 2025):
pure tensor functions that never touch a model (``../shared/docs/transition-spec.md``)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from jaxtyping import Float
from torch import Tensor

Pattern = Float[Tensor, "batch head query_pos key_pos"]
Span = tuple[int, int]
HookPair = tuple[str, Callable[..., Any]]

MIN_PAPER_LEN = 400
"""Prompts shorter than this are left unchanged by the paper version (the original crashes)."""

# The paper's weights for the two history intervals, and its special first-interval branch.
_RECENT_WEIGHT, _OLDER_WEIGHT, _FIRST_WEIGHT = 7.0, 3.0, 10.0
_SMALL_FILL, _FIRST_SMALL_FILL = 0.01, 0.001
# SRA's mask weights for kept (>= tau) and small entries of the target window.
_SRA_KEPT, _SRA_SMALL = 100, 5

PARTS = ("prune", "sink", "move")
"""The paper version's three parts, in the order it applies them: drop the span rows' entries
below ``tau``, halve the sink column, move ``beta`` times the freed mass onto the history."""

MAX_ROW_MASS = 1e3
"""Most attention mass an edited row may end with; it bounds ``beta`` and SRA's strengthen factors.

The transitions add mass without renormalising: a paper row ends with at most ``10 beta`` (the
first-interval weight 10 times the freed mass, at most 1), an SRA row with at most its
strengthen factor. The pattern then multiplies the value vectors in the model's dtype, and the
residual stream is squared by the next RMSNorm: a large enough factor overflows to ``inf`` and
every logit becomes NaN (``beta = 1e38`` does in float32). ``1e3`` keeps the attention output of
value entries up to 65 inside float16's range (65504) and leaves float32/bfloat16 over 30
orders of magnitude, while the paper's grid (``beta <= 1.5``) and SRA's factors (4-5) are far
below it.
"""


# ---------------------------------------------------------------------------------------------
# Pure arithmetic
# ---------------------------------------------------------------------------------------------


def paper_interval(seq_len: int, n_layers: int, intervals_per_layer: int) -> int:
    """Span length of the paper schedule: ``floor(T / (L - 1 + K))`` rounded down to a multiple of 5."""
    raw = seq_len // (n_layers - 1 + intervals_per_layer)
    return raw - raw % 5


def paper_schedule(
    seq_len: int, n_layers: int = 32, intervals_per_layer: int = 2
) -> dict[int, list[Span]]:
    """Layer index -> query-row spans ``[start, end)`` of the paper version.

    Layers ``1 .. L-3`` are scheduled; layer ``l`` works on spans
    ``[(l - 1 + j + 2) * I, (l - 1 + j + 3) * I)`` for ``j < K``, so deeper layers work nearer
    the end of the context. Returns ``{}`` when ``seq_len < 400`` (too short to apply) or when
    the interval ``I`` rounds down to 0.

    Args:
        seq_len: prompt length ``T`` in tokens (one sequence, no padding).
        n_layers: model depth ``L``.
        intervals_per_layer: ``K >= 1``, spans per layer.

    Raises:
        ValueError: negative or non-integer ``seq_len``, ``n_layers < 4`` or ``K < 1``.
    """
    seq_len = check_int("seq_len", seq_len, minimum=0)
    n_layers = check_int("n_layers", n_layers, minimum=4)
    intervals_per_layer = check_int("intervals_per_layer", intervals_per_layer, minimum=1)
    if seq_len < MIN_PAPER_LEN:
        return {}
    interval = paper_interval(seq_len, n_layers, intervals_per_layer)
    if interval == 0:
        return {}
    return {
        layer: [
            ((layer - 1 + j + 2) * interval, (layer - 1 + j + 3) * interval)
            for j in range(intervals_per_layer)
        ]
        for layer in range(1, n_layers - 2)
    }


def dispense(
    pattern: Pattern,
    spans: Sequence[Span],
    alpha: float,
    beta: float,
    *,
    conserve_mass: bool = False,
    parts: Sequence[str] | None = None,
) -> Pattern:
    """Apply the paper's transition to the query rows of ``spans``; returns a new tensor.

    For each span ``[s, e)`` (``n = e - s``), in float32: entries of rows ``s..e-1`` (keys
    ``< e``) below ``tau = alpha / e`` become 0, the sink column 0 is halved, and with the freed
    mass ``r = 1 - row sum`` and the mask ``m`` (1 where an entry is ``>= tau``, else 0.01) over
    the window ``[s - 2n, e - n)``, ``a = beta * r / sum(m)`` is spread as ``7 a m`` on keys
    ``[s - n, s)`` and ``3 a m`` on ``[s - 2n, s - n)``. A span with ``s == n`` uses the
    original's first-interval branch (window ``[0, n)``, fill 0.001, weight 10).

    Invariant: rows do **not** keep summing to 1 (they end between ``1 - r + 3 beta r`` and
    ``1 - r + 7 beta r``), unless ``conserve_mass=True``, the named non-default variant that
    rescales every touched row to its original sum. Other rows and the input are untouched.

    Args:
        pattern: post-softmax causal pattern ``[batch, head, q, k]`` of one prompt (no padding).
        spans: ``[start, end)`` query-row spans (e.g. ``paper_schedule(T, L, K)[layer]``).
        alpha: threshold factor, finite, ``> 0``.
        beta: share of the freed mass moved to the history, ``0 <= beta <= MAX_ROW_MASS / 10``.
        conserve_mass: renormalise touched rows to their original sums.
        parts: the parts of ``PARTS`` to apply (``check_parts``), None: all three, the paper
            version. Each part is the full version's own step: ``"prune"`` zeroes the entries
            below ``tau``, ``"sink"`` halves column 0, ``"move"`` adds the mass the full version
            adds (``beta`` times the mass pruning and halving together free, on the full
            version's mask), whether or not the other parts remove it.

    Returns:
        A new tensor of the same shape and dtype.

    Raises:
        ValueError: pattern not 4-d, a span outside it or without ``2n`` keys of history
            (other than ``s == n``), overlapping spans, ``alpha`` or ``beta`` not finite,
            ``alpha <= 0``, ``beta`` outside ``[0, MAX_ROW_MASS / 10]``, or bad ``parts``.
    """
    _check_pattern(pattern)
    check_paper_params(alpha, beta, conserve_mass)
    parts = check_parts(parts)
    spans = _check_spans(spans, pattern.shape[-2], pattern.shape[-1])
    out = pattern.clone()
    for span in spans:
        dispense_span_(out, span, alpha, beta, conserve_mass=conserve_mass, parts=parts)
    return out


def sra_layer(
    pattern: Pattern,
    layer: int,
    n_layers: int,
    *,
    begin_length: int,
    threshold_len: int,
    elimi_factor_inter: float,
    elimi_factor_outer: float,
    strengthen_factor_inter: float,
    strengthen_factor_outer: float,
    dyna_div: int | None = None,
) -> Pattern:
    """One layer of the 2025 SRA version ("inter" on ``l < L-1``, "outer" on ``1 <= l < L-1``).

    Each sequence uses its own valid length ``V`` (query rows with any non-zero attention).
    Both parts share one step: in the selected rows (per head and row, those with an entry
    ``> tau`` in the target window) entries ``< tau`` become 0, and ``rem = 1 - row sum`` is
    added to the target window as ``rem / sum(m) * factor * m`` with ``m`` = 100 on entries
    ``>= tau`` and 5 elsewhere. Rows do not keep summing to 1.

    * inter (skipped if ``V <= B0 + TL + 3``): ``c = ceil((V - B0 - TL - 3) / (L + 3))``,
      rows ``[s, e)`` with ``s = (l + 3) c + B0 + 3``, ``e = min(s + c, V - TL)``, keys ``< e``,
      ``tau = ei / (s - B0)``, target ``[s - 3n, s - 2n)``.
    * outer (skipped if ``V <= TL + 3``): ``c = ceil((V - TL - 3) / (L + 3))``, the last
      ``TL`` rows, all keys, ``tau = eo / (V - TL)``, target ``[(l + 2) c + 3, min(.. + c, V - TL))``.
      The original reads batch row 0 for every sequence; here each sequence uses its own rows.

    Args:
        pattern: post-softmax causal pattern ``[batch, head, q, k]`` (float32 arithmetic).
        layer: 0-based layer index; ``n_layers``: model depth ``L``.
        begin_length, threshold_len: ``B0`` and ``TL`` in tokens.
        elimi_factor_inter, elimi_factor_outer: threshold factors ``ei``, ``eo``.
        strengthen_factor_inter, strengthen_factor_outer: factors ``si``, ``so``, in
            ``[0, MAX_ROW_MASS]``.
        dyna_div: if given, ``TL = floor(V / dyna_div)`` per sequence (dynamic threshold).

    Returns:
        A new tensor; the input is untouched.

    Raises:
        ValueError: pattern not 4-d, a layer outside ``0..L-1``, or invalid parameters.
    """
    _check_pattern(pattern)
    n_layers = check_int("n_layers", n_layers, minimum=2)
    layer = check_int("layer", layer, minimum=0)
    if layer >= n_layers:
        raise ValueError(f"layer {layer} is outside 0..{n_layers - 1}")
    params = SRAParams(
        begin_length, threshold_len, elimi_factor_inter, elimi_factor_outer,
        strengthen_factor_inter, strengthen_factor_outer, dyna_div,
    )
    out = pattern.clone()
    valid = (pattern.sum(dim=(1, 3)) > 0).sum(dim=-1)
    for b in range(out.shape[0]):
        sra_sequence_(out[b : b + 1], layer, n_layers, int(valid[b]), params)
    return out


@dataclass(frozen=True)
class SRAParams:
    """Parameters of the SRA version (public defaults of the authors' code).

    Raises ValueError naming the field: integers below their minimum, non-finite factors,
    ``elimi_factor_* <= 0``, or ``strengthen_factor_*`` outside ``[0, MAX_ROW_MASS]``.
    """

    begin_length: int = 100
    threshold_len: int = 200
    elimi_factor_inter: float = 0.5
    elimi_factor_outer: float = 0.3
    strengthen_factor_inter: float = 4.0
    strengthen_factor_outer: float = 4.0
    dyna_div: int | None = None

    def __post_init__(self) -> None:
        fields = {"begin_length": check_int("begin_length", self.begin_length, minimum=0),
                  "threshold_len": check_int("threshold_len", self.threshold_len, minimum=0)}
        for name in ("elimi_factor_inter", "elimi_factor_outer"):
            fields[name] = check_positive(name, getattr(self, name))
        for name in ("strengthen_factor_inter", "strengthen_factor_outer"):  # a row ends with <= factor
            fields[name] = check_real(name, getattr(self, name), positive=False, maximum=MAX_ROW_MASS)
        if self.dyna_div is not None:
            fields["dyna_div"] = check_int("dyna_div", self.dyna_div, minimum=1)
        for name, value in fields.items():  # plain Python numbers (numpy scalars accepted)
            object.__setattr__(self, name, value)

    def threshold_for(self, valid_len: int) -> int:
        """``TL`` for a sequence of ``valid_len`` tokens (dynamic when ``dyna_div`` is set)."""
        return valid_len // self.dyna_div if self.dyna_div else self.threshold_len


# ---------------------------------------------------------------------------------------------
# In-place kernels on the touched rows only (shared by the pure functions and the hooks)
# ---------------------------------------------------------------------------------------------


@dataclass
class RowStats:
    """Diagnostics of one edit: per-row freed and added mass and row sums after (float32 CPU)."""

    rows: int = 0
    freed: list[Tensor] = field(default_factory=list)
    added: list[Tensor] = field(default_factory=list)
    sums_after: list[Tensor] = field(default_factory=list)

    def record(self, freed: Tensor, added: Tensor, sums_after: Tensor) -> None:
        self.rows += sums_after.numel()
        self.freed.append(freed.detach().flatten())
        self.added.append(added.detach().flatten())
        self.sums_after.append(sums_after.detach().flatten())


def dispense_span_(
    pattern: Tensor,
    span: Span,
    alpha: float,
    beta: float,
    *,
    conserve_mass: bool,
    heads: Tensor | None = None,
    stats: RowStats | None = None,
    target_start: int | None = None,
    first_row: int = 0,
    parts: tuple[str, ...] | None = None,
) -> None:
    """Paper edit of one span, in place on ``pattern`` (all heads, or the ``heads`` index);
    ``parts`` (checked, None: all) as in ``dispense``.

    ``target_start`` moves the 2n-key history window elsewhere (the placebo control) while
    keeping the per-row added mass of the real edit. ``pattern`` may hold a block of query rows
    (chunked attention): its row ``i`` is query row ``first_row + i`` and only the span's rows
    inside the block are edited, each exactly as in the whole pattern (the edit is per row;
    keys past the block's last row are zero in a causal pattern, so fewer keys change nothing).
    """
    s, e = span
    lo, hi = max(s, first_row), min(e, first_row + pattern.shape[-2])
    if hi <= lo:
        return
    rows = slice(lo - first_row, hi - first_row)
    keys = min(e, pattern.shape[-1])
    head_idx = slice(None) if heads is None else heads
    original = _keys_to(pattern[:, head_idx, rows, :keys].float(), e)
    tau = alpha / e
    full = torch.where(original < tau, torch.zeros_like(original), original)  # pruned and halved: the new block
    full[..., 0] /= 2
    freed = 1.0 - full.sum(dim=-1, keepdim=True)  # what the full version moves (beta times it), whatever parts run
    block = full if parts is None else _removed(original, tau, parts)
    removed = freed if parts is None else 1.0 - block.sum(dim=-1, keepdim=True)
    if parts is None or "move" in parts:
        _move_(block, full, span, tau, beta * freed, target_start)
    if conserve_mass:
        block *= original.sum(dim=-1, keepdim=True) / block.sum(dim=-1, keepdim=True)
    sums_after = block.sum(-1) if stats is not None else None
    pattern[:, head_idx, rows, :keys] = block[..., :keys].to(pattern.dtype)
    if stats is not None:
        stats.record(removed, sums_after - (1.0 - removed.squeeze(-1)), sums_after)


def _removed(original: Tensor, tau: float, parts: tuple[str, ...]) -> Tensor:
    """A new block of the span's rows after the removing parts among ``parts`` (prune, sink)."""
    block = torch.where(original < tau, torch.zeros_like(original), original) if "prune" in parts else original.clone()
    if "sink" in parts:
        block[..., 0] /= 2
    return block


def _move_(block: Tensor, full: Tensor, span: Span, tau: float, moved: Tensor, target_start: int | None) -> None:
    """Add ``moved`` (``beta`` times the freed mass, ``[..., rows, 1]``) to the history window of
    ``block`` in place, weighted by the mask of ``full`` (the pruned and halved block), or, with
    ``target_start``, the same mass per row over the ``2n`` keys from there (the placebo)."""
    s, e = span
    n = e - s
    if s == n:  # the original's branch for a span one interval in
        mask = torch.where(full[..., :n] >= tau, 1.0, _FIRST_SMALL_FILL)
        block[..., :n] += _FIRST_WEIGHT * (moved / mask.sum(dim=-1, keepdim=True)) * mask
        return
    mask = torch.where(full[..., s - 2 * n : s] >= tau, 1.0, _SMALL_FILL)
    a = moved / mask.sum(dim=-1, keepdim=True)
    weights = torch.cat((_OLDER_WEIGHT * mask[..., :n], _RECENT_WEIGHT * mask[..., n:]), dim=-1)
    if target_start is None:
        block[..., s - 2 * n : s] += a * weights
    else:  # placebo: the same added mass per row, spread over another 2n-key window
        mass = (a * weights).sum(dim=-1, keepdim=True)
        block[..., target_start : target_start + 2 * n] += mass * weights / weights.sum(dim=-1, keepdim=True)


def sra_sequence_(
    pattern: Tensor,
    layer: int,
    n_layers: int,
    valid_len: int,
    params: SRAParams,
    *,
    heads: Tensor | None = None,
    stats: RowStats | None = None,
    first_row: int = 0,
) -> list[Span]:
    """SRA on one sequence ``[1, head, rows, keys]`` (no padding; all ``V`` rows, or a block of
    them), in place; returns the row spans.

    ``pattern`` may hold a block of query rows whose first is row ``first_row`` (chunked
    attention): the rows of each span inside it are edited as in the whole pattern."""
    edited: list[Span] = []
    if layer >= n_layers - 1:
        return edited
    blocks = n_layers + 3
    tl = params.threshold_for(valid_len)
    if valid_len > params.begin_length + tl + 3:
        chunk = math.ceil((valid_len - params.begin_length - tl - 3) / blocks)
        s = (layer + 3) * chunk + params.begin_length + 3
        e = min(s + chunk, valid_len - tl)
        n = e - s
        if n > 0:
            tau = params.elimi_factor_inter / (s - params.begin_length)
            edited.append((s, e))
            _strengthen_(
                pattern, rows=(s, e), keys_end=e, target=(s - 3 * n, s - 2 * n), tau=tau,
                factor=params.strengthen_factor_inter, heads=heads, stats=stats, first_row=first_row,
            )
    if layer >= 1 and valid_len > tl + 3:
        chunk = math.ceil((valid_len - tl - 3) / blocks)
        s = (layer + 2) * chunk + 3
        e = min(s + chunk, valid_len - tl)
        if e > s:
            edited.append((valid_len - tl, valid_len))
            _strengthen_(
                pattern, rows=(valid_len - tl, valid_len), keys_end=valid_len, target=(s, e),
                tau=params.elimi_factor_outer / (valid_len - tl),
                factor=params.strengthen_factor_outer, heads=heads, stats=stats, first_row=first_row,
            )
    return edited


def _keys_to(rows: Tensor, n_keys: int) -> Tensor:
    """``rows`` (``[..., q, k]``) with zero keys appended up to ``n_keys``: a block of a causal
    pattern lacks keys past its last row, which are zero, and the row sums must run over the
    same length as in the whole pattern to round the same way."""
    short = n_keys - rows.shape[-1]
    return torch.nn.functional.pad(rows, (0, short)) if short > 0 else rows


def _strengthen_(
    pattern: Tensor,
    *,
    rows: Span,
    keys_end: int,
    target: Span,
    tau: float,
    factor: float,
    heads: Tensor | None,
    stats: RowStats | None,
    first_row: int = 0,
) -> None:
    """SRA's shared step ("strengthen a target window") on ``rows``, in place (those of them
    inside the block of rows ``pattern`` holds, which starts at row ``first_row``)."""
    head_idx = slice(None) if heads is None else heads
    r0, r1 = max(rows[0], first_row), min(rows[1], first_row + pattern.shape[-2])
    if r1 <= r0:
        return
    r0, r1 = r0 - first_row, r1 - first_row
    keys = min(keys_end, pattern.shape[-1])
    t0, t1 = target
    block = _keys_to(pattern[:, head_idx, r0:r1, :keys].float(), keys_end)
    selected = (block[..., t0:t1] > tau).any(dim=-1, keepdim=True)
    kept = torch.where(block < tau, torch.zeros_like(block), block)
    remaining = 1.0 - kept.sum(dim=-1, keepdim=True)
    window = kept[..., t0:t1]
    mask = torch.where(window >= tau, _SRA_KEPT, _SRA_SMALL)
    kept_sums = kept.sum(-1) if stats is not None else None
    window += remaining / mask.sum(dim=-1, keepdim=True) * factor * mask
    new = torch.where(selected, kept, block)
    pattern[:, head_idx, r0:r1, :keys] = new[..., :keys].to(pattern.dtype)
    if stats is not None:
        sel = selected.squeeze(-1)
        sums = new.sum(-1)
        stats.record(remaining.squeeze(-1)[sel], (sums - kept_sums)[sel], sums[sel])


# ---------------------------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------------------------


def is_int(value: object) -> bool:
    """Python or numpy integers (not bools)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(name: str, value: object, *, minimum: int) -> int:
    """``value`` as a Python int, if it is an integer ``>= minimum`` (numpy integers accepted)."""
    if not is_int(value):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:  # type: ignore[operator]
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)  # type: ignore[call-overload]


def check_real(name: str, value: object, *, positive: bool, maximum: float | None = None) -> float:
    """``value`` as a float, if it is a finite number ``> 0`` (``positive``) or ``>= 0``, and at
    most ``maximum`` (None: no bound beyond finite)."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum:g} (edited rows would end with more than "
                         f"MAX_ROW_MASS = {MAX_ROW_MASS:g} of attention mass and overflow), got {value!r}")
    return float(value)


def check_positive(name: str, value: object) -> float:
    return check_real(name, value, positive=True)


def check_parts(parts: Sequence[str] | str | None) -> tuple[str, ...] | None:
    """``parts`` of the paper version as a tuple in ``PARTS`` order, or None for all three (the
    paper version itself: one name for it).

    Raises:
        ValueError: a string, an empty selection, a repeated part, or a name not in ``PARTS``.
    """
    if parts is None:
        return None
    if isinstance(parts, str):
        raise ValueError(f"parts must be a sequence of names from {PARTS}, got the string {parts!r}")
    chosen = list(parts)
    unknown = [p for p in chosen if p not in PARTS]
    if unknown or not chosen or len(set(chosen)) != len(chosen):
        raise ValueError(f"parts must be one or more distinct names from {PARTS}, got {tuple(chosen)}")
    ordered = tuple(p for p in PARTS if p in chosen)
    return None if ordered == PARTS else ordered


def check_paper_params(alpha: object, beta: object, conserve_mass: bool = False) -> None:
    check_positive("alpha", alpha)  # any finite alpha > 0 is safe: it only sets the threshold
    # a row ends with at most 10 beta (the first-interval weight times the freed mass)
    check_real("beta", beta, positive=False, maximum=MAX_ROW_MASS / _FIRST_WEIGHT)
    if conserve_mass and beta == 0:
        raise ValueError("conserve_mass=True needs beta > 0: with beta = 0 a row whose entries all fall "
                         "below the threshold keeps no mass to rescale (0 / 0)")


def _check_pattern(pattern: object) -> None:
    if not isinstance(pattern, Tensor) or pattern.ndim != 4:
        shape = tuple(pattern.shape) if isinstance(pattern, Tensor) else type(pattern).__name__
        raise ValueError(f"pattern must be a 4-d tensor [batch, head, q, k], got {shape}")


def _check_spans(spans: Sequence[Span], n_queries: int, n_keys: int) -> list[Span]:
    """Validate spans against a ``[.., q, k]`` pattern; returns them as int tuples."""
    out: list[Span] = []
    for span in spans:
        try:
            s, e = (int(v) for v in span)
        except (TypeError, ValueError):
            raise ValueError(f"a span must be a pair (start, end), got {span!r}") from None
        n = e - s
        if not 0 <= s < e <= min(n_queries, n_keys):
            raise ValueError(
                f"span [{s}, {e}) is empty or outside the pattern ({n_queries} queries, {n_keys} keys)"
            )
        if s != n and s - 2 * n < 0:
            raise ValueError(
                f"span [{s}, {e}) needs {2 * n} keys of history before it (start >= {2 * n}, "
                f"or start == length for the first-interval branch)"
            )
        out.append((s, e))
    ordered = sorted(out)
    for (_, e0), (s1, _) in zip(ordered, ordered[1:]):
        if s1 < e0:
            raise ValueError(f"spans overlap: {ordered}")
    return out
