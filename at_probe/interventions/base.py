"""The interface every attention intervention shares, and the hook plumbing of the simple edits.

Every intervention in at_probe (the transitions of ``at_probe.interventions.transition`` and the
alternatives ``EmphasisSteering``, ``PositionCalibration``, ``AttentionTemperature``) offers:

* ``.hooks(model, *, prompt_lengths=None, prompts=None)``: plain TransformerLens
  ``(hook_name, fn)`` pairs, fresh state per call;
* ``.applied(model, ...)``: a context manager registering them, removed on exit;
* ``.last_report()``: what the most recent hooks did.

``HookLifetime`` gives every one of them ``applied`` and ``last_report`` from its ``hooks``.

``prompts`` (``at_probe.models.prompts.Prompt``, one per sequence of the batch) tells an edit where each
prompt ends and where its parts (sink, template, document, instruction) are; methods that act on
a part (emphasis, calibration) require it. ``prompt_lengths`` alone is enough for the others.

``AttentionEdit`` is the shared plumbing of the alternatives: an edit of the pre-softmax scores
(``hook_attn_scores``) or of the post-softmax pattern (``hook_pattern``) of chosen layers and
heads, applied at every forward pass (prefill, KV-cache decode steps and cache-less
continuations alike), each sequence of a left-padded batch in its own coordinates. Subclasses
supply one per-sequence tensor edit; the pure arithmetic lives beside each method.

Which passes are one prompt (the same rule for every intervention, ``PromptTracker``): a set of
hooks acts on one prompt at a time, and a pass either starts a new prompt (its rows and lengths
are read afresh, its report starts empty) or continues the current one. A pass **continues**
the current prompt only when it is a decode step:

* it runs on a KV cache (its attention has fewer query rows than keys): a cached step of
  ``generate``, or of any loop that feeds ``past_key_values``; or
* it is a full pass inside the same generation as the prompt's first pass and its tokens
  extend that pass's tokens: a step of ``generate(..., use_past_kv_cache=False)``.

Every other pass is a **new prompt**: each ``model(...)``, ``run_with_hooks`` and
``run_with_cache`` call (also one whose tokens happen to extend the previous pass's, or a fresh
one-token pass), and the first pass of each ``generate`` call (also one that starts with an
earlier call's output). A *generation* is one call of the model's ``generate``,
``generate_stream`` or ``hf_generate`` inside ``.applied(model)`` (which marks each call), or a
``generating(model)`` block. Hooks registered by hand (``model.hooks(fwd_hooks=edit.hooks(model))``)
need ``generating(model)`` around ``generate(..., use_past_kv_cache=False)`` only: without it
each of its steps would be a new prompt (a warning says so); cached generation needs nothing.

Example:
    >>> from at_probe.interventions.temperature import AttentionTemperature
    >>> edit = AttentionTemperature(tau=0.8, layers=range(15, 30))
    >>> with edit.applied(model), torch.inference_mode():
    ...     out = model.generate(tokens, max_new_tokens=20, do_sample=False, verbose=False)
    >>> print(edit.last_report())
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal

import torch
from torch import Tensor

# The prompt-tracking names are part of this interface module (``at_probe.intervention`` before the split).
from at_probe.interventions.tracking import (  # noqa: F401
    GENERATION_METHODS,
    PromptTracker,
    generating,
    generations_marked,
    lengths_of,
)
from at_probe.models.chunked import query_block
from at_probe.models.hooked import editable, pass_padding
from at_probe.models.names import EMBED_INPUT_HOOK, layer_of, pattern_hook, scores_hook

if TYPE_CHECKING:
    import pandas as pd

    from at_probe.models.prompts import Prompt

HookPair = tuple[str, Callable[..., Any]]



@dataclass(frozen=True)
class SequenceView:
    """Where one sequence's slice of a pass sits, in that sequence's own coordinates.

    Attributes:
        index: the sequence's row in the batch.
        prompt_length: real prompt tokens (keys at or past it were generated or appended).
        query_start: position of the slice's first query row (0 at prefill, the block's first
            row under chunked attention; the new token's position at a KV-cache decode step).
        prompt: the sequence's ``Prompt`` when the hooks were given prompts, else None.
        memory: what an edit keeps about this sequence between the passes of one prompt
            (emptied when a new prompt starts), e.g. what it measured at prefill for the
            decode steps.
    """

    index: int
    prompt_length: int
    query_start: int
    prompt: Prompt | None
    memory: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class EditLayerReport:
    """What an edit did at one layer since the current prompt's prefill.

    ``rows_edited`` counts query rows (per sequence, not per head) over every pass (prefill and
    decode steps); ``shift_mean`` is the mean total-variation distance between an edited
    attention row before and after the edit, per (head, row), for edits of the pattern
    (None for edits of the scores, whose effect on the pattern is not recomputed).
    """

    layer: int
    passes: int
    rows_edited: int
    shift_mean: float | None


@dataclass(frozen=True)
class EditReport:
    """Per-layer reports of the current prompt."""

    layers: dict[int, EditLayerReport]

    def to_frame(self) -> pd.DataFrame:
        """One row per layer (tidy)."""
        import pandas as pd

        return pd.DataFrame([vars(r) for r in self.layers.values()])

    def __str__(self) -> str:
        if not self.layers:
            return "nothing edited"
        lines = ["layer  passes  rows  shift"]
        for r in self.layers.values():
            shift = "-" if r.shift_mean is None else f"{r.shift_mean:.3f}"
            lines.append(f"{r.layer:5d} {r.passes:7d} {r.rows_edited:5d}  {shift}")
        return "\n".join(lines)


@dataclass
class _LayerTally:
    passes: int = 0
    rows: int = 0
    shift_sum: float = 0.0
    shift_count: int = 0



class _EditRun(PromptTracker):
    """State of one set of edit hooks: the current prompt, its lengths, the tallies."""

    def __init__(self, model: Any, lengths: list[int] | None, prompts: Sequence[Prompt] | None):
        super().__init__(model)
        self.fixed_lengths = lengths
        self.prompts = list(prompts) if prompts is not None else None
        self.lengths: list[int] | None = lengths
        self.offsets: list[int] | None = None
        self.tally: dict[int, _LayerTally] = {}
        self.memory: dict[int, dict[Any, Any]] = {}  # per sequence of the batch: SequenceView.memory
        self.checked = False  # the prompts were compared with the current prompt's tokens

    def new_prompt(self) -> None:
        self.lengths = self.fixed_lengths
        self.tally = {}
        self.memory = {}
        self.checked = False

    def views(self, tensor: Tensor, offsets: list[int]) -> list[tuple[SequenceView, int, int]]:
        """Per sequence: its view, the first row and the first key of its slice of the hook's
        tensor (a whole pass, a block of its query rows, or a decode step)."""
        batch = tensor.shape[0]
        block = query_block(tensor)
        if self.prompts is not None and len(self.prompts) != batch:
            raise ValueError(f"the hooks were given {len(self.prompts)} prompts for a batch of {batch}")
        if self.lengths is None:  # the first full pass is the prompt
            self.lengths = [block.total_keys - o for o in offsets]
        if len(self.lengths) != batch:
            raise ValueError(f"prompt_lengths has {len(self.lengths)} entries for a batch of {batch}")
        if not self.checked and self.prompts is not None and self.prompt is not None and not block.past:
            self.check_prompts(offsets)
        first_query = block.start  # padded position of the slice's first query row
        out = []
        for b, off in enumerate(offsets):
            row0 = max(0, off - first_query)
            view = SequenceView(
                b,
                self.lengths[b],
                first_query + row0 - off,
                None if self.prompts is None else self.prompts[b],
                self.memory.setdefault(b, {}),
            )
            out.append((view, row0, off))
        return out

    def check_prompts(self, offsets: list[int]) -> None:
        """Each sequence must start with its prompt's ids right after its padding: spans read
        off a prompt given for another row (or another document) would be silently wrong."""
        assert self.prompts is not None and self.prompt is not None
        for b, (prompt, off) in enumerate(zip(self.prompts, offsets)):
            ids = self.prompt[b, off : off + len(prompt)].tolist()
            if ids != list(prompt.ids):
                raise ValueError(f"sequence {b} of the batch is not the prompt given for it (prompts must "
                                 "be in batch order, one per sequence, and the pass must start with them)")
        self.checked = True

    def report(self) -> EditReport:
        layers = {
            l: EditLayerReport(l, t.passes, t.rows, t.shift_sum / t.shift_count if t.shift_count else None)
            for l, t in sorted(self.tally.items())
        }
        return EditReport(layers)


def resolve_heads(heads: Sequence[int] | None, n_heads: int) -> Tensor | None:
    """Validated head indices as a sorted long tensor (``None``: every head).

    Every intervention's ``heads=`` (and emphasis' ``head_config``) counts **query** heads,
    ``0 .. cfg.n_heads - 1``, the head axis of ``hook_pattern`` / ``hook_attn_scores``. Under
    grouped-query attention (GQA) query head ``h`` reads key-value head
    ``h // (n_heads // n_key_value_heads)`` (SmolLM2: 9 query heads, 3 KV heads, so heads 0-2
    share KV head 0); an edit changes only the listed query heads' attention, never the shared
    keys and values, so the other query heads of the group are untouched.

    Raises:
        ValueError: an index outside ``0 .. n_heads - 1``, a duplicate, or an empty selection.
    """
    if heads is None:
        return None
    heads = tuple(heads)
    bad = [
        h for h in heads if isinstance(h, bool) or not isinstance(h, numbers.Integral) or not 0 <= h < n_heads
    ]
    if bad or not heads:
        raise ValueError(f"head indices {bad or '[]'} are invalid for a model with {n_heads} heads")
    if len(set(heads)) != len(heads):
        raise ValueError(f"duplicate head indices in {list(heads)}")
    return torch.tensor(sorted(int(h) for h in heads))


def checked_head_config(config: Mapping[int, Sequence[int]]) -> dict[int, tuple[int, ...]]:
    """A ``{layer: query heads}`` selection as sorted ``{int: tuple of ints}``.

    Raises:
        ValueError: not a non-empty mapping, or layers or heads that are not integers.
    """
    if not isinstance(config, Mapping) or not config:
        raise ValueError(f"head_config must be a non-empty {{layer: heads}} mapping, got {config!r}")
    out = {int_tuple("head_config layers", [l])[0]: int_tuple(f"head_config[{l}]", h) for l, h in config.items()}
    return dict(sorted(out.items()))


def config_heads(config: Mapping[int, Sequence[int]], n_layers: int, n_heads: int) -> dict[int, Tensor | None]:
    """``_layer_heads`` of a ``{layer: query heads}`` selection, checked against the model.

    Raises:
        ValueError: a layer outside ``0 .. n_layers - 1`` or heads ``resolve_heads`` refuses.
    """
    bad = [l for l in config if not 0 <= l < n_layers]
    if bad:
        raise ValueError(f"head_config layers {bad} are outside the model's layers (0..{n_layers - 1})")
    return {l: resolve_heads(h, n_heads) for l, h in config.items()}


def int_tuple(name: str, values: Sequence[int]) -> tuple[int, ...]:
    """``values`` as a tuple of ints; strings, bools and non-integers are refused by name."""
    if isinstance(values, (str, bytes)):
        raise ValueError(f"{name} must be a sequence of integers, got {values!r}")
    out = tuple(values)
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in out):
        raise ValueError(f"{name} must be integers, got {list(out)!r}")
    return tuple(int(v) for v in out)


def last_half(n_layers: int) -> tuple[int, ...]:
    """The last half of the layers, ``L // 2 .. L - 1`` (where Found-in-the-Middle calibrates)."""
    return tuple(range(n_layers // 2, n_layers))


class HookLifetime:
    """``applied`` and ``last_report`` for any class whose ``hooks(model, ...)`` stores its run
    state (with a ``report()``) as ``_last_run``: the transitions and the alternatives."""

    def hooks(self, model: Any, *, prompt_lengths: Sequence[int] | int | None = None,
              prompts: Sequence[Prompt] | None = None) -> list[HookPair]:
        raise NotImplementedError

    @contextmanager
    def applied(self, model: Any, *, prompt_lengths: Sequence[int] | int | None = None,
                prompts: Sequence[Prompt] | None = None) -> Iterator[Any]:
        """Context manager: the intervention is active on ``model`` inside the block. Hooks are
        registered through ``model.hooks(...)`` and always removed on exit, also when the body
        raises. Works with ``model(...)``, ``run_with_cache`` and ``generate`` with or without
        the KV cache (the class docstring says which passes it edits). Each pass and each
        ``generate`` call is a prompt of its own (the module docstring's rule): every call of
        the model's generation methods is marked as one generation (``generations_marked``)
        for the block's duration. Yields the model."""
        pairs = self.hooks(model, prompt_lengths=prompt_lengths, prompts=prompts)
        with model.hooks(fwd_hooks=pairs), generations_marked(model):
            yield model

    def last_report(self) -> Any:
        """What the most recent hooks did (the class's report type)."""
        run = getattr(self, "_last_run", None)
        if run is None:
            raise RuntimeError("no hooks have been built yet: call .hooks(model) or .applied(model)")
        return run.report()


@dataclass(frozen=True)
class AttentionEdit(HookLifetime):
    """Shared hook plumbing of the alternatives; subclasses define the edit.

    Subclasses set ``stage`` (``"scores"``: edit ``hook_attn_scores``, pre-softmax, masked
    entries hold the dtype's minimum; ``"pattern"``: edit ``hook_pattern``), ``needs_prompts``,
    and implement ``_layer_heads`` and ``_edit_``.
    """

    stage: ClassVar[Literal["scores", "pattern"]]
    needs_prompts: ClassVar[bool] = False

    def _layer_heads(self, n_layers: int, n_heads: int) -> dict[int, Tensor | None]:
        """Layer -> heads to edit (None: all heads), validated against the model."""
        raise NotImplementedError

    def _edit_(
        self, seq: Tensor, layer: int, heads: Tensor | None, view: SequenceView
    ) -> tuple[int, Tensor | None]:
        """Edit one sequence's slice ``[1, head, rows, keys]`` in place.

        Returns the number of query rows edited and, for pattern edits, the total-variation
        shift of each edited (head, row) (or None).
        """
        raise NotImplementedError

    def hooks(
        self,
        model: Any,
        *,
        prompt_lengths: Sequence[int] | int | None = None,
        prompts: Sequence[Prompt] | None = None,
    ) -> list[HookPair]:
        """Plain TransformerLens ``(hook_name, fn)`` pairs applying the edit (fresh state per call).

        Pairs concatenate with other hooks; on a shared hook point hooks run in list order.
        An earlier hook on the same point keeps what it saw (``at_probe.models.hooked.editable``).
        Which passes form one prompt: the module docstring (registered by hand, wrap
        ``generate(..., use_past_kv_cache=False)`` in ``generating(model)``).

        Args:
            model: a ``TransformerBridge``.
            prompt_lengths: real prompt tokens per sequence, when a pass holds more than the
                prompt (teacher forcing). ``None``: each prompt's first pass is all prompt.
            prompts: the batch's ``Prompt`` objects (required by edits of a prompt part).

        Raises:
            ValueError: layers or heads outside the model, prompts missing where required,
                or (at run time) right padding or a batch of another size.
        """
        if self.needs_prompts and prompts is None:
            raise ValueError(
                f"{type(self).__name__} needs prompts=[at_probe.models.prompts.Prompt, ...] "
                "to find each prompt's parts"
            )
        layer_heads = self._layer_heads(int(model.cfg.n_layers), int(model.cfg.n_heads))
        run = _EditRun(model, lengths_of(prompt_lengths, prompts), prompts)
        object.__setattr__(self, "_last_run", run)

        def read_padding(scores: Tensor, *, hook: Any) -> None:
            run.see_attention(scores)
            run.offsets = pass_padding(scores)

        def edit(tensor: Tensor, *, hook: Any) -> Tensor:
            run.see_attention(tensor)
            layer = layer_of(hook.name)
            if self.stage == "scores":
                run.offsets = pass_padding(tensor)
            elif run.offsets is None:
                raise RuntimeError(
                    f"{hook.name}: the {scores_hook(layer)} pair did not run; "
                    "register every pair that .hooks(model) returns"
                )
            offsets, run.offsets = run.offsets, None
            tensor = editable(tensor, hook, edit)
            tally = run.tally.setdefault(layer, _LayerTally())
            tally.passes += query_block(tensor).first  # a pass's blocks are one pass
            for view, row0, key0 in run.views(tensor, offsets):
                rows, shift = self._edit_(
                    tensor[view.index : view.index + 1, :, row0:, key0:], layer, layer_heads[layer], view
                )
                tally.rows += rows
                if shift is not None and shift.numel():
                    tally.shift_sum += float(shift.detach().float().sum())
                    tally.shift_count += shift.numel()
            return tensor

        pairs: list[HookPair] = [(EMBED_INPUT_HOOK, run.see_tokens)]
        for layer in layer_heads:
            if self.stage == "scores":
                pairs.append((scores_hook(layer), edit))
            else:
                pairs += [(scores_hook(layer), read_padding), (pattern_hook(layer), edit)]
        return pairs
