"""Attention Transition: the exact arithmetic and its TransformerLens hooks.

Two published versions (arXiv 2307.13365; ``../shared/docs/transition-spec.md``):

* **paper** (2023): on layer ``l`` the query rows of a few context spans drop small attention
  entries, halve the sink column and move ``beta`` times the freed mass onto the two
  intervals just before the span (7 : 3). Rows do **not** keep summing to 1.
* **SRA** (2025): "inter" strengthening of a window three intervals back for a span of rows,
  and "outer" strengthening of one window for the last ``threshold_len`` prompt rows.

Pure tensor functions come first (``paper_schedule``, ``dispense``, ``sra_layer``): they take
and return tensors and never touch a model. The hook classes below them (``PaperTransition``,
``SRATransition``, ``PlaceboTransition``) find the prompt rows of each sequence, call the same
arithmetic in place on the touched rows only, and record a report.

Each prompt's rows are edited with the schedule of its own length wherever a pass computes
them: at the prefill, and again at each growing full pass of ``generate(...,
use_past_kv_cache=False)``, which recomputes them (KV-cache decode steps compute only the new
row). Rows past the prompt (generated tokens) are never edited: the decode steps of a generation
continue its prompt, with the prompt's length (``at_probe.intervention``). Every other
pass is a new prompt: two ``model(...)`` calls in one ``applied`` block are two prompts even
when the second's tokens extend the first's, and so are two ``generate`` calls. The rule is
the same for every intervention (``at_probe.intervention``, "Which passes are one prompt").

Example:
    >>> import torch, at_probe as ap
    >>> from at_probe.transition import PaperTransition
    >>> model = ap.load_model("tiny")
    >>> tr = PaperTransition(alpha=1.0, beta=0.5, intervals_per_layer=2)
    >>> with tr.applied(model), torch.inference_mode():
    ...     out = model.generate(tokens, max_new_tokens=20, do_sample=False, verbose=False)
    >>> tr.last_report().to_frame()
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch
from jaxtyping import Float
from torch import Tensor

from at_probe.hooked import editable, left_padding
from at_probe.intervention import HookLifetime, PromptTracker, lengths_of, resolve_heads
from at_probe.names import EMBED_INPUT_HOOK, layer_of, pattern_hook, resolve_layers, scores_hook
from at_probe.seeding import draw_generator, prompt_digest

if TYPE_CHECKING:
    import pandas as pd

    from at_probe.prompts import Prompt

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
    seq_len = _check_int("seq_len", seq_len, minimum=0)
    n_layers = _check_int("n_layers", n_layers, minimum=4)
    intervals_per_layer = _check_int("intervals_per_layer", intervals_per_layer, minimum=1)
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

    Returns:
        A new tensor of the same shape and dtype.

    Raises:
        ValueError: pattern not 4-d, a span outside it or without ``2n`` keys of history
            (other than ``s == n``), overlapping spans, ``alpha`` or ``beta`` not finite,
            ``alpha <= 0``, or ``beta`` outside ``[0, MAX_ROW_MASS / 10]``.
    """
    _check_pattern(pattern)
    _check_paper_params(alpha, beta, conserve_mass)
    spans = _check_spans(spans, pattern.shape[-2], pattern.shape[-1])
    out = pattern.clone()
    for span in spans:
        _dispense_span_(out, span, alpha, beta, conserve_mass=conserve_mass)
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
    n_layers = _check_int("n_layers", n_layers, minimum=2)
    layer = _check_int("layer", layer, minimum=0)
    if layer >= n_layers:
        raise ValueError(f"layer {layer} is outside 0..{n_layers - 1}")
    params = SRAParams(
        begin_length, threshold_len, elimi_factor_inter, elimi_factor_outer,
        strengthen_factor_inter, strengthen_factor_outer, dyna_div,
    )
    out = pattern.clone()
    valid = (pattern.sum(dim=(1, 3)) > 0).sum(dim=-1)
    for b in range(out.shape[0]):
        _sra_sequence_(out[b : b + 1], layer, n_layers, int(valid[b]), params)
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
        fields = {"begin_length": _check_int("begin_length", self.begin_length, minimum=0),
                  "threshold_len": _check_int("threshold_len", self.threshold_len, minimum=0)}
        for name in ("elimi_factor_inter", "elimi_factor_outer"):
            fields[name] = _check_positive(name, getattr(self, name))
        for name in ("strengthen_factor_inter", "strengthen_factor_outer"):  # a row ends with <= factor
            fields[name] = _check_real(name, getattr(self, name), positive=False, maximum=MAX_ROW_MASS)
        if self.dyna_div is not None:
            fields["dyna_div"] = _check_int("dyna_div", self.dyna_div, minimum=1)
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


def _dispense_span_(
    pattern: Tensor,
    span: Span,
    alpha: float,
    beta: float,
    *,
    conserve_mass: bool,
    heads: Tensor | None = None,
    stats: RowStats | None = None,
    target_start: int | None = None,
) -> None:
    """Paper edit of one span, in place on ``pattern`` (all heads, or the ``heads`` index).

    ``target_start`` moves the 2n-key history window elsewhere (the placebo control) while
    keeping the per-row added mass of the real edit.
    """
    s, e = span
    n = e - s
    head_idx = slice(None) if heads is None else heads
    original = pattern[:, head_idx, s:e, :e].float()
    tau = alpha / e
    block = torch.where(original < tau, torch.zeros_like(original), original)  # the one new block
    block[..., 0] /= 2
    freed = 1.0 - block.sum(dim=-1, keepdim=True)
    if s == n:  # the original's branch for a span one interval in
        window = block[..., :n]
        mask = torch.where(window >= tau, 1.0, _FIRST_SMALL_FILL)
        window += _FIRST_WEIGHT * (beta * freed / mask.sum(dim=-1, keepdim=True)) * mask
    else:
        window = block[..., s - 2 * n : s]
        mask = torch.where(window >= tau, 1.0, _SMALL_FILL)
        a = beta * freed / mask.sum(dim=-1, keepdim=True)
        weights = torch.cat((_OLDER_WEIGHT * mask[..., :n], _RECENT_WEIGHT * mask[..., n:]), dim=-1)
        if target_start is None:
            window += a * weights
        else:  # placebo: the same added mass per row, spread over another 2n-key window
            mass = (a * weights).sum(dim=-1, keepdim=True)
            block[..., target_start : target_start + 2 * n] += mass * weights / weights.sum(dim=-1, keepdim=True)
    if conserve_mass:
        block *= original.sum(dim=-1, keepdim=True) / block.sum(dim=-1, keepdim=True)
    sums_after = block.sum(-1) if stats is not None else None
    pattern[:, head_idx, s:e, :e] = block.to(pattern.dtype)
    if stats is not None:
        stats.record(freed, sums_after - (1.0 - freed.squeeze(-1)), sums_after)


def _sra_sequence_(
    pattern: Tensor,
    layer: int,
    n_layers: int,
    valid_len: int,
    params: SRAParams,
    *,
    heads: Tensor | None = None,
    stats: RowStats | None = None,
) -> list[Span]:
    """SRA on one sequence ``[1, head, V, V]`` (no padding), in place; returns the row spans."""
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
                factor=params.strengthen_factor_inter, heads=heads, stats=stats,
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
                factor=params.strengthen_factor_outer, heads=heads, stats=stats,
            )
    return edited


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
) -> None:
    """SRA's shared step ("strengthen a target window") on ``rows``, in place."""
    head_idx = slice(None) if heads is None else heads
    r0, r1 = rows
    t0, t1 = target
    block = pattern[:, head_idx, r0:r1, :keys_end].float()
    selected = (block[..., t0:t1] > tau).any(dim=-1, keepdim=True)
    kept = torch.where(block < tau, torch.zeros_like(block), block)
    remaining = 1.0 - kept.sum(dim=-1, keepdim=True)
    window = kept[..., t0:t1]
    mask = torch.where(window >= tau, _SRA_KEPT, _SRA_SMALL)
    kept_sums = kept.sum(-1) if stats is not None else None
    window += remaining / mask.sum(dim=-1, keepdim=True) * factor * mask
    new = torch.where(selected, kept, block)
    pattern[:, head_idx, r0:r1, :keys_end] = new.to(pattern.dtype)
    if stats is not None:
        sel = selected.squeeze(-1)
        sums = new.sum(-1)
        stats.record(remaining.squeeze(-1)[sel], (sums - kept_sums)[sel], sums[sel])


# ---------------------------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    """Python or numpy integers (not bools)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_int(name: str, value: object, *, minimum: int) -> int:
    """``value`` as a Python int, if it is an integer ``>= minimum`` (numpy integers accepted)."""
    if not _is_int(value):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:  # type: ignore[operator]
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)  # type: ignore[call-overload]


def _check_real(name: str, value: object, *, positive: bool, maximum: float | None = None) -> float:
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


def _check_positive(name: str, value: object) -> float:
    return _check_real(name, value, positive=True)


def _check_paper_params(alpha: object, beta: object, conserve_mass: bool = False) -> None:
    _check_positive("alpha", alpha)  # any finite alpha > 0 is safe: it only sets the threshold
    # a row ends with at most 10 beta (the first-interval weight times the freed mass)
    _check_real("beta", beta, positive=False, maximum=MAX_ROW_MASS / _FIRST_WEIGHT)
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


# ---------------------------------------------------------------------------------------------
# Hooks
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerReport:
    """What the transition did at one layer in the last prefill.

    ``spans`` lists, per sequence, the ``[start, end)`` row spans edited (positions within the
    sequence, padding excluded). Mass figures are per touched (head, row), in attention units.
    """

    layer: int
    spans: list[list[Span]]
    rows_touched: int
    freed_mass_mean: float
    added_mass_mean: float
    row_sum_min: float
    row_sum_mean: float
    row_sum_max: float


@dataclass(frozen=True)
class TransitionReport:
    """Per-layer reports of the last forward pass, plus notes (e.g. "prompt too short")."""

    layers: dict[int, LayerReport]
    notes: tuple[str, ...] = ()

    def to_frame(self) -> pd.DataFrame:
        """One row per layer (tidy), for printing or seaborn."""
        import pandas as pd

        return pd.DataFrame([vars(r) for r in self.layers.values()])

    def __str__(self) -> str:
        if not self.layers:
            return "no rows edited" + "".join(f"\n{n}" for n in self.notes)
        lines = ["layer  rows  freed  added  row-sum min/mean/max"]
        for r in self.layers.values():
            lines.append(
                f"{r.layer:5d} {r.rows_touched:5d} {r.freed_mass_mean:6.3f} {r.added_mass_mean:6.3f}"
                f"  {r.row_sum_min:.3f}/{r.row_sum_mean:.3f}/{r.row_sum_max:.3f}"
            )
        return "\n".join(lines + list(self.notes))


class _Run(PromptTracker):
    """State of one set of hooks: the current prompt (``PromptTracker``), reports, warnings.

    A continuation of the prompt (a decode step of one generation, with or without the KV
    cache) keeps the prompt lengths, so generated rows are never edited; a new prompt gets its
    own lengths, schedule and report.
    """

    def __init__(self, model: Any, prompt_lengths: Sequence[int] | None):
        super().__init__(model)
        self.fixed_lengths = list(prompt_lengths) if prompt_lengths is not None else None
        self.lengths: list[int] | None = None
        self.stats: dict[int, tuple[list[list[Span]], RowStats]] = {}
        self.offsets: list[int] | None = None  # left padding per sequence, from this layer's scores
        self.notes: list[str] = []  # of the current prompt
        self.warned: set[str] = set()  # over the whole run: each warning once

    def new_prompt(self) -> None:
        self.lengths = None
        self.stats = {}
        self.notes = []

    def note_once(self, message: str) -> None:
        """Record a note for this prompt's report; warn the first time the run sees it."""
        if message not in self.notes:
            self.notes.append(message)
        if message not in self.warned:
            self.warned.add(message)
            warnings.warn(message, stacklevel=3)

    def prompt_lengths(self, pattern: Tensor, offsets: list[int]) -> list[int]:
        """Real (non-padding) prompt length of each sequence in a full pass."""
        if self.fixed_lengths is not None:
            if len(self.fixed_lengths) != pattern.shape[0]:
                raise ValueError(
                    f"prompt_lengths has {len(self.fixed_lengths)} entries for a batch of {pattern.shape[0]}"
                )
            return [min(n, pattern.shape[-1] - o) for n, o in zip(self.fixed_lengths, offsets)]
        if self.lengths is None or self.prompt is None:
            t = pattern.shape[-1] if self.prompt is None else self.prompt.shape[1]
            self.lengths = [t - o for o in offsets]
        return self.lengths

    def report(self) -> TransitionReport:
        layers = {}
        for layer in sorted(self.stats):
            spans, st = self.stats[layer]
            if st.rows == 0:
                continue
            sums = torch.cat(st.sums_after).float().cpu()
            layers[layer] = LayerReport(
                layer=layer,
                spans=spans,
                rows_touched=st.rows,
                freed_mass_mean=torch.cat(st.freed).float().mean().item(),
                added_mass_mean=torch.cat(st.added).float().mean().item(),
                row_sum_min=sums.min().item(),
                row_sum_mean=sums.mean().item(),
                row_sum_max=sums.max().item(),
            )
        return TransitionReport(layers, tuple(self.notes))


@dataclass(frozen=True)
class _Transition(HookLifetime):
    """Shared hook plumbing; subclasses define ``_layers`` and ``_edit_``."""

    def _layers(self, n_layers: int) -> tuple[int, ...]:
        raise NotImplementedError

    def _freeze_selection(self) -> None:
        """Validate ``layers`` at construction and store ``layers``/``heads`` as tuples."""
        layers, heads = self.layers, self.heads  # type: ignore[attr-defined]  # subclass fields
        _check_layer_arg(layers)
        if layers is not None:
            object.__setattr__(self, "layers", tuple(int(l) for l in layers))
        if heads is not None:
            object.__setattr__(self, "heads", tuple(int(h) if _is_int(h) else h for h in heads))

    def _edit_(self, seq: Tensor, ids: Tensor | None, layer: int, n_layers: int, heads: Tensor | None,
               stats: RowStats, run: _Run) -> list[Span]:
        """Edit one sequence ``[1, head, T, T]`` in place; return the row spans edited.

        ``ids`` are the sequence's ``T`` prompt token ids (None when the pass had no token
        ids, e.g. embeddings fed directly); only the placebo's per-document draws use them.
        """
        raise NotImplementedError

    def hooks(self, model: Any, *, prompt_lengths: Sequence[int] | int | None = None,
              prompts: Sequence[Prompt] | None = None) -> list[HookPair]:
        """Plain TransformerLens ``(hook_name, fn)`` pairs applying the transition.

        Each call starts fresh state (prompt lengths, report); each pass and each ``generate``
        call is then a prompt of its own unless it continues one generation (the rule of
        ``at_probe.intervention``; registered by hand, wrap ``generate(...,
        use_past_kv_cache=False)`` in ``at_probe.intervention.generating(model)``). Pairs can
        be concatenated with other hooks; on a shared hook point hooks run in list order, so
        ``tr.hooks(m) + probe.hooks()`` lets the probe see the edited pattern. A hook that ran
        earlier on the same point keeps what it saw: the pattern is edited in place only when
        nothing else holds it, and copied otherwise (``at_probe.hooked.editable``). Left padding is read
        from the attention mask as applied to the pre-softmax scores (a pair on
        ``hook_attn_scores`` per edited layer, read-only); right padding is refused.

        Args:
            model: a ``TransformerBridge`` (its ``cfg.n_layers`` / ``cfg.n_heads`` are used).
            prompt_lengths: real (non-padding) prompt tokens per sequence, when a pass holds
                more than the prompt (e.g. prompt + reference for teacher forcing); rows past
                it are never edited. ``None``: each prompt's first pass is all prompt.
            prompts: the batch's ``Prompt`` objects (the shared interface of
                ``at_probe.intervention``); only their lengths are used.

        Raises:
            ValueError: layers or heads outside the model; at run time, right padding.
        """
        n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
        layers = self._layers(n_layers)
        heads = resolve_heads(self.heads, n_heads)  # type: ignore[attr-defined]
        run = _Run(model, lengths_of(prompt_lengths, prompts))
        object.__setattr__(self, "_last_run", run)

        def scores_fn(scores: Tensor, *, hook: Any) -> None:
            run.see_attention(scores.shape)
            if scores.shape[-2] == scores.shape[-1]:  # full pass: read the padding off the mask
                run.offsets = left_padding(scores)

        def hook_fn(pattern: Tensor, *, hook: Any) -> Tensor | None:
            run.see_attention(pattern.shape)
            layer = layer_of(hook.name)
            if pattern.shape[-2] != pattern.shape[-1]:
                return None  # a KV-cache decode step: prompt rows were edited at prefill
            if run.offsets is None:
                raise RuntimeError(f"{hook.name}: the transition's {scores_hook(layer)} pair did not run; "
                                   "register every pair that .hooks(model) returns")
            pattern = editable(pattern, hook, hook_fn)  # a copy when an earlier hook may hold it
            offsets, run.offsets = run.offsets, None  # each layer reads its own scores
            lengths = run.prompt_lengths(pattern, offsets)
            stats = RowStats()
            spans = []
            for b, (off, length) in enumerate(zip(offsets, lengths)):
                seq = pattern[b : b + 1, :, off : off + length, off : off + length]
                ids = None if run.prompt is None else run.prompt[b, off : off + length]
                spans.append(self._edit_(seq, ids, layer, n_layers, heads, stats, run))
            run.stats[layer] = (spans, stats)
            return pattern

        return [(EMBED_INPUT_HOOK, run.see_tokens)] + [
            pair for l in layers for pair in ((scores_hook(l), scores_fn), (pattern_hook(l), hook_fn))]


def _check_layer_arg(layers: Sequence[int] | None) -> None:
    if layers is not None:
        if isinstance(layers, (str, bytes)) or not all(
            _is_int(l) and l >= 0 for l in layers
        ):
            raise ValueError(f"layers must be non-negative integers, got {layers!r}")


@dataclass(frozen=True)
class PaperTransition(_Transition):
    """The 2023 paper version as hooks on ``blocks.{l}.attn.hook_pattern``.

    Each sequence's prompt rows are edited once, at prefill, with the schedule of its own
    length (``paper_schedule``), its own sink column and offsets under left padding. Prompts
    under 400 tokens are left unchanged (one warning). Attention mass is **not** conserved
    (see ``dispense``); ``conserve_mass=True`` is the named variant that renormalises.

    Args:
        alpha: threshold factor (``tau = alpha / end``), finite, ``> 0``.
        beta: share of the freed mass moved to the history, ``0 <= beta <= MAX_ROW_MASS / 10``
            (larger values overflow; see ``MAX_ROW_MASS``).
        intervals_per_layer: ``K``, spans per layer.
        layers: layers to edit; ``None`` means the paper's layers ``1 .. L-3``.
            Explicit layers must lie in ``1 .. L-3`` (the schedule defines no spans elsewhere).
        heads: query-head indices to edit; ``None`` means all heads (GQA: ``resolve_heads``).
        conserve_mass: renormalise touched rows to their original sums.

    Defaults ``alpha=1.0, beta=0.5, K=2`` are one of the paper's released settings
    (``decode_al_1_be_05_lay_2`` in the authors' XSum release), the "paper example" of our XSum
    experiment, ``flow.py`` and the README; the authors' 2023 code initialises ``alpha=0.5,
    beta=0.1``. ``layers`` follows the paper's schedule (``../shared/docs/transition-spec.md``).
    """

    alpha: float = 1.0
    beta: float = 0.5
    intervals_per_layer: int = 2
    layers: tuple[int, ...] | None = None
    heads: tuple[int, ...] | None = None
    conserve_mass: bool = False

    def __post_init__(self) -> None:
        _check_paper_params(self.alpha, self.beta, self.conserve_mass)
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "beta", float(self.beta))
        object.__setattr__(self, "intervals_per_layer",
                           _check_int("intervals_per_layer", self.intervals_per_layer, minimum=1))
        self._freeze_selection()

    def _layers(self, n_layers: int) -> tuple[int, ...]:
        return resolve_layers(self.layers, range(1, n_layers - 2), what="the paper schedule's layers")

    def _spans(self, seq_len: int, layer: int, n_layers: int, run: _Run) -> list[Span]:
        if seq_len < MIN_PAPER_LEN:
            run.note_once(
                f"prompt of {seq_len} tokens is shorter than {MIN_PAPER_LEN}: the paper transition "
                "leaves it unchanged"
            )
            return []
        schedule = paper_schedule(seq_len, n_layers, self.intervals_per_layer)
        if not schedule:
            run.note_once(
                f"prompt of {seq_len} tokens is too short for {n_layers} layers and K = "
                f"{self.intervals_per_layer}: the paper's interval rounds down to 0 tokens, so the "
                "transition leaves it unchanged"
            )
        return schedule.get(layer, [])

    def _edit_(self, seq, ids, layer, n_layers, heads, stats, run):  # type: ignore[no-untyped-def]
        spans = self._spans(seq.shape[-1], layer, n_layers, run)
        for span in spans:
            _dispense_span_(seq, span, self.alpha, self.beta, conserve_mass=self.conserve_mass,
                            heads=heads, stats=stats)
        return spans


@dataclass(frozen=True)
class PlaceboTransition(PaperTransition):
    """Control for the paper version: same rows, same freed and added mass, random targets.

    Every scheduled span is edited exactly like ``PaperTransition`` (threshold, halved sink,
    the same added mass per row), but the mass goes to a random window of ``2n`` keys
    (drawn uniformly among the causal windows that end by the span's start, per ``(seed,
    layer, span)`` and per document: each document gets its own draw, the same in any batch)
    instead of the two intervals just before the span. A difference
    between the paper version and this placebo is the effect of *where* the mass goes.
    """

    seed: int = 0

    def target_start(self, layer: int, index: int, span: Span, prompt_ids: Sequence[int] | Tensor) -> int:
        """First key of the ``2n``-key window that span number ``index`` of ``layer`` feeds.

        Uniform over ``0 .. s - 2n`` (every causal window that ends by the span's start ``s``;
        the paper's own window starts at ``s - 2n``), drawn per ``(seed, layer, index,
        document)``: ``prompt_ids`` are the prompt's token ids (``at_probe.seeding``).
        """
        s, e = span
        gen = draw_generator(self.seed, "transition-window", layer, index, prompt_digest(prompt_ids))
        return int(torch.randint(0, s - 2 * (e - s) + 1, (1,), generator=gen))

    def _edit_(self, seq, ids, layer, n_layers, heads, stats, run):  # type: ignore[no-untyped-def]
        spans = self._spans(seq.shape[-1], layer, n_layers, run)
        if spans and ids is None:
            raise ValueError("PlaceboTransition draws its targets per document from the prompt's token ids: "
                             "run the model on token ids, not embeddings")
        for j, span in enumerate(spans):
            start = self.target_start(layer, j, span, ids)
            _dispense_span_(seq, span, self.alpha, self.beta, conserve_mass=self.conserve_mass,
                            heads=heads, stats=stats, target_start=start)
        return spans


@dataclass(frozen=True)
class SRATransition(SRAParams, _Transition):
    """The authors' 2025 SRA version as hooks (``sra_layer`` per sequence, in place).

    Parameters are those of ``SRAParams`` (public defaults of the authors' code), plus
    ``layers`` (``None``: every layer where SRA acts, ``0 .. L-2``; "outer" from layer 1) and
    ``heads`` (query-head indices, ``None``: all heads; GQA: ``resolve_heads``).
    """

    layers: tuple[int, ...] | None = None
    heads: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self._freeze_selection()

    def _layers(self, n_layers: int) -> tuple[int, ...]:
        return resolve_layers(self.layers, range(0, n_layers - 1), what="the layers where SRA acts")

    def _edit_(self, seq, ids, layer, n_layers, heads, stats, run):  # type: ignore[no-untyped-def]
        return _sra_sequence_(seq, layer, n_layers, seq.shape[-1], self, heads=heads, stats=stats)
