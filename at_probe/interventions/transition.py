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
continue its prompt, with the prompt's length (``at_probe.interventions.base``). Every other
pass is a new prompt: two ``model(...)`` calls in one ``applied`` block are two prompts even
when the second's tokens extend the first's, and so are two ``generate`` calls. The rule is
the same for every intervention (``at_probe.interventions.base``, "Which passes are one prompt").

Example:
    >>> import torch, at_probe as ap
    >>> from at_probe.interventions.transition import PaperTransition
    >>> model = ap.load_model("tiny")
    >>> tr = PaperTransition(alpha=1.0, beta=0.5, intervals_per_layer=2)
    >>> with tr.applied(model), torch.inference_mode():
    ...     out = model.generate(tokens, max_new_tokens=20, do_sample=False, verbose=False)
    >>> tr.last_report().to_frame()
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import Tensor

from at_probe.interventions.base import HookLifetime, PromptTracker, lengths_of, resolve_heads
from at_probe.interventions.registry import Key, Method, Placebo, register

# The arithmetic is public here too (``from at_probe.transition import dispense`` before the split).
from at_probe.interventions.transition_ops import (  # noqa: F401
    MAX_ROW_MASS,
    MIN_PAPER_LEN,
    PARTS,
    Pattern,
    RowStats,
    Span,
    SRAParams,
    check_int,
    check_paper_params,
    check_parts,
    dispense,
    dispense_span_,
    is_int,
    paper_interval,
    paper_schedule,
    sra_layer,
    sra_sequence_,
)
from at_probe.models.chunked import QueryBlock, query_block
from at_probe.models.hooked import editable, pass_padding
from at_probe.models.names import EMBED_INPUT_HOOK, layer_of, pattern_hook, resolve_layers, scores_hook
from at_probe.runs.choices import check_choice
from at_probe.runs.seeding import draw_generator, prompt_digest

if TYPE_CHECKING:
    import pandas as pd

    from at_probe.models.prompts import Prompt

HookPair = tuple[str, Callable[..., Any]]

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

    def prompt_lengths(self, block: QueryBlock, offsets: list[int]) -> list[int]:
        """Real (non-padding) prompt length of each sequence in a full pass (``block``: the
        hook's rows of it, ``at_probe.models.chunked.query_block``)."""
        if self.fixed_lengths is not None:
            if len(self.fixed_lengths) != len(offsets):
                raise ValueError(
                    f"prompt_lengths has {len(self.fixed_lengths)} entries for a batch of {len(offsets)}"
                )
            return [min(n, block.total_keys - o) for n, o in zip(self.fixed_lengths, offsets)]
        if self.lengths is None or self.prompt is None:
            t = block.total_keys if self.prompt is None else self.prompt.shape[1]
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
            object.__setattr__(self, "heads", tuple(int(h) if is_int(h) else h for h in heads))

    def _edit_(self, seq: Tensor, ids: Tensor | None, layer: int, n_layers: int, heads: Tensor | None,
               stats: RowStats, run: _Run, first_row: int, length: int) -> list[Span]:
        """Edit one sequence's prompt rows in place; return the row spans scheduled.

        ``seq`` is ``[1, head, rows, keys]``: prompt rows ``first_row ..`` (all ``T`` of them
        in a whole pass, those of a block under chunked attention) against the prompt's keys
        (up to ``T`` = ``length``). ``ids`` are the sequence's ``T`` prompt token ids (None
        when the pass had no token ids, e.g. embeddings fed directly); only the placebo's
        per-document draws use them.
        """
        raise NotImplementedError

    def hooks(self, model: Any, *, prompt_lengths: Sequence[int] | int | None = None,
              prompts: Sequence[Prompt] | None = None) -> list[HookPair]:
        """Plain TransformerLens ``(hook_name, fn)`` pairs applying the transition.

        Each call starts fresh state (prompt lengths, report); each pass and each ``generate``
        call is then a prompt of its own unless it continues one generation (the rule of
        ``at_probe.interventions.base``; registered by hand, wrap ``generate(...,
        use_past_kv_cache=False)`` in ``at_probe.interventions.base.generating(model)``). Pairs can
        be concatenated with other hooks; on a shared hook point hooks run in list order, so
        ``tr.hooks(m) + probe.hooks()`` lets the probe see the edited pattern. A hook that ran
        earlier on the same point keeps what it saw: the pattern is edited in place only when
        nothing else holds it, and copied otherwise (``at_probe.models.hooked.editable``). Left padding is read
        from the attention mask as applied to the pre-softmax scores (a pair on
        ``hook_attn_scores`` per edited layer, read-only); right padding is refused.

        Args:
            model: a ``TransformerBridge`` (its ``cfg.n_layers`` / ``cfg.n_heads`` are used).
            prompt_lengths: real (non-padding) prompt tokens per sequence, when a pass holds
                more than the prompt (e.g. prompt + reference for teacher forcing); rows past
                it are never edited. ``None``: each prompt's first pass is all prompt.
            prompts: the batch's ``Prompt`` objects (the shared interface of
                ``at_probe.interventions.base``); only their lengths are used.

        Raises:
            ValueError: layers or heads outside the model; at run time, right padding.
        """
        n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
        layers = self._layers(n_layers)
        heads = resolve_heads(self.heads, n_heads)  # type: ignore[attr-defined]
        run = _Run(model, lengths_of(prompt_lengths, prompts))
        object.__setattr__(self, "_last_run", run)

        def scores_fn(scores: Tensor, *, hook: Any) -> None:
            run.see_attention(scores)
            if not query_block(scores).past:  # a full pass (or a block of one): the padding
                run.offsets = pass_padding(scores)

        def hook_fn(pattern: Tensor, *, hook: Any) -> Tensor | None:
            run.see_attention(pattern)
            layer = layer_of(hook.name)
            block = query_block(pattern)
            if block.past:
                return None  # a KV-cache decode step: prompt rows were edited at prefill
            if run.offsets is None:
                raise RuntimeError(f"{hook.name}: the transition's {scores_hook(layer)} pair did not run; "
                                   "register every pair that .hooks(model) returns")
            pattern = editable(pattern, hook, hook_fn)  # a copy when an earlier hook may hold it
            offsets, run.offsets = run.offsets, None  # each layer (each block) reads its own scores
            lengths = run.prompt_lengths(block, offsets)
            if block.first:  # a pass's blocks add to one report per layer
                run.stats[layer] = ([[] for _ in offsets], RowStats())
            spans, stats = run.stats[layer]
            for b, (off, length) in enumerate(zip(offsets, lengths)):
                first = block.start - off  # the block's first row in the sequence's positions
                lo, hi = max(0, -first), min(pattern.shape[-2], length - first)  # its prompt rows
                seq = pattern[b : b + 1, :, lo : max(lo, hi), off : off + length]
                ids = None if run.prompt is None else run.prompt[b, off : off + length]
                for span in self._edit_(seq, ids, layer, n_layers, heads, stats, run, first + lo, length):
                    if span not in spans[b]:
                        spans[b].append(span)
            return pattern

        return [(EMBED_INPUT_HOOK, run.see_tokens)] + [
            pair for l in layers for pair in ((scores_hook(l), scores_fn), (pattern_hook(l), hook_fn))]


def _check_layer_arg(layers: Sequence[int] | None) -> None:
    if layers is not None:
        if isinstance(layers, (str, bytes)) or not all(
            is_int(l) and l >= 0 for l in layers
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
        parts: apply only these of the version's parts (``transition_ops.PARTS``: ``"prune"``,
            ``"sink"``, ``"move"``; see ``dispense``), to tell which part does what; None (or
            all three): the paper version. Setting key ``parts=prune+sink``.

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
    parts: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        check_paper_params(self.alpha, self.beta, self.conserve_mass)
        object.__setattr__(self, "parts", check_parts(self.parts))
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "beta", float(self.beta))
        object.__setattr__(self, "intervals_per_layer",
                           check_int("intervals_per_layer", self.intervals_per_layer, minimum=1))
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

    def _edit_(self, seq, ids, layer, n_layers, heads, stats, run, first_row, length):  # type: ignore[no-untyped-def]
        spans = self._spans(length, layer, n_layers, run)
        for span in spans:
            dispense_span_(seq, span, self.alpha, self.beta, conserve_mass=self.conserve_mass,
                            heads=heads, stats=stats, first_row=first_row, parts=self.parts)
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
    With ``parts``, the same parts; they must include ``"move"`` (without it nothing moves, and
    the placebo would be the edit itself).
    """

    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.parts is not None and "move" not in self.parts:
            raise ValueError(f"a placebo of parts {'+'.join(self.parts)} is the edit itself: only the move has "
                             "a target to randomise (include 'move' in parts)")

    def target_start(self, layer: int, index: int, span: Span, prompt_ids: Sequence[int] | Tensor) -> int:
        """First key of the ``2n``-key window that span number ``index`` of ``layer`` feeds.

        Uniform over ``0 .. s - 2n`` (every causal window that ends by the span's start ``s``;
        the paper's own window starts at ``s - 2n``), drawn per ``(seed, layer, index,
        document)``: ``prompt_ids`` are the prompt's token ids (``at_probe.runs.seeding``).
        """
        s, e = span
        gen = draw_generator(self.seed, "transition-window", layer, index, prompt_digest(prompt_ids))
        return int(torch.randint(0, s - 2 * (e - s) + 1, (1,), generator=gen))

    def _edit_(self, seq, ids, layer, n_layers, heads, stats, run, first_row, length):  # type: ignore[no-untyped-def]
        spans = self._spans(length, layer, n_layers, run)
        if spans and ids is None:
            raise ValueError("PlaceboTransition draws its targets per document from the prompt's token ids: "
                             "run the model on token ids, not embeddings")
        for j, span in enumerate(spans):
            start = self.target_start(layer, j, span, ids)
            dispense_span_(seq, span, self.alpha, self.beta, conserve_mass=self.conserve_mass,
                            heads=heads, stats=stats, target_start=start, first_row=first_row, parts=self.parts)
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

    def _edit_(self, seq, ids, layer, n_layers, heads, stats, run, first_row, length):  # type: ignore[no-untyped-def]
        return sra_sequence_(seq, layer, n_layers, length, self, heads=heads, stats=stats, first_row=first_row)


# ---------------------------------------------------------------------------------------------
# Settings (``at_probe.interventions.registry``): ``paper:alpha=1,beta=0.5,k=2`` and its kin
# ---------------------------------------------------------------------------------------------

def _parts(text: str) -> tuple[str, ...] | None:
    """``"prune+sink"`` -> ``("prune", "sink")`` (``check_parts``; all three -> None)."""
    return check_parts([check_choice("transition part", name, PARTS) for name in text.split("+")])


_PAPER_KEYS = {"alpha": Key(float), "beta": Key(float), "k": Key(int, field="intervals_per_layer"),
               "parts": Key(_parts, show="+".join)}
register(Method("paper", PaperTransition, _PAPER_KEYS, summary="the 2023 transition (PaperTransition)",
                placebo=Placebo("placebo", applies=lambda keys: "move" in keys.get("parts", "move").split("+"))))
register(Method("placebo", PlaceboTransition, {**_PAPER_KEYS, "seed": Key(int)},
                summary="the paper's rows and mass, random targets (PlaceboTransition)"))
register(Method("sra", SRATransition, {name: Key(parse) for name, parse in (
    ("begin_length", int), ("threshold_len", int), ("elimi_factor_inter", float),
    ("elimi_factor_outer", float), ("strengthen_factor_inter", float), ("strengthen_factor_outer", float),
    ("dyna_div", int))}, summary="the 2025 SRA version (SRATransition's fields)"))
