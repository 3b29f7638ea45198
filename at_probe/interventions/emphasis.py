"""PASTA-style emphasis steering (Zhang et al., ICLR 2024) and its head profiling.

On each steered head, every query row's pre-softmax scores of the prompt keys *outside* the
emphasised span get ``log(alpha)`` added (PASTA's "exclude" scaling: their post-softmax weight
is multiplied by ``alpha`` before renormalisation, so the span gains what the rest loses). As in
PASTA, the sink and template are outside the span, keys generated after the prompt are never
scaled, and the edit applies at every forward pass (prefill and each decode step).

The span is a part of each prompt (``"document"`` or ``"instruction"``, from
``at_probe.models.prompts.Prompt.parts``). Two placebos (``placebo_seed``): a random span of the same
length, the control for a short target such as the instruction; and random heads in the same
layers (never a steered one), the control for the document, which fills most of the prompt so
that any span of its length overlaps it almost entirely. Both are drawn per document from its
prompt's token ids (``at_probe.runs.seeding``), so a document gets the same draw in any batch.

Heads are chosen as PASTA does, by profiling: steer one head at a time on development
documents (``profile_heads``), rank the heads by the mean change of the reference summary's
NLL and steer the best ``k`` (``at_probe.interventions.profiling``: ``rank_heads``, ``top_heads``).

Example:
    >>> from at_probe.interventions.emphasis import EmphasisSteering
    >>> from at_probe.models.prompts import build_prompt
    >>> prompt = build_prompt(model.tokenizer, document)
    >>> steer = EmphasisSteering(head_config={20: (1, 4), 25: (0,)}, target="document")
    >>> with steer.applied(model, prompts=[prompt]), torch.inference_mode():
    ...     out = model.generate(prompt.tensor(), max_new_tokens=50, do_sample=False, verbose=False)
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from at_probe.interventions import profiling
from at_probe.interventions.base import (
    AttentionEdit,
    SequenceView,
    checked_head_config,
    config_heads,
    int_tuple,
)
from at_probe.interventions.profiling import top_heads
from at_probe.interventions.registry import PLACEBO_SEED, Key, Method, Placebo, choice, register
from at_probe.runs.choices import check_choice

if TYPE_CHECKING:
    from at_probe.models.prompts import Prompt

Scores = Float[Tensor, "batch head query_pos key_pos"]
Span = tuple[int, int]
Target = Literal["document", "instruction"]
TARGETS: tuple[str, ...] = ("document", "instruction")
PlaceboKind = Literal["span", "heads"]
PLACEBOS: tuple[str, ...] = ("span", "heads")


def steer_scores_(
    scores: Scores, span: Span, prompt_length: int, alpha: float, heads: Tensor | None = None
) -> Scores:
    """Add ``log(alpha)`` to the scores of prompt keys outside ``span``, in place; returns ``scores``.

    Args:
        scores: pre-softmax scores ``[1, head, q, k]`` of one sequence (keys from its position 0).
        span: ``[start, end)`` key positions to emphasise.
        prompt_length: keys ``>= prompt_length`` (generated tokens) are left alone.
        alpha: scaling of the non-emphasised keys' weights, ``0 < alpha``.
        heads: heads to steer (None: all).
    """
    start, end = span
    stop = min(prompt_length, scores.shape[-1])
    shift = math.log(alpha)
    rows = scores if heads is None else scores[:, heads]
    rows[..., : min(start, stop)] += shift
    if end < stop:
        rows[..., end:stop] += shift
    if heads is not None:
        scores[:, heads] = rows
    return scores


def steer_scores(
    scores: Scores, span: Span, prompt_length: int, alpha: float, heads: Tensor | None = None
) -> Scores:
    """``steer_scores_`` on a copy: the input is untouched."""
    return steer_scores_(scores.clone(), span, prompt_length, alpha, heads)


def placebo_span(prompt_ids: Sequence[int], length: int, seed: int) -> Span:
    """A random ``[start, start + length)`` inside a prompt of ``len(prompt_ids)`` tokens.

    Drawn uniformly over every start, from a generator seeded by ``seed`` and the prompt's ids,
    so the same prompt always gets the same span.
    """
    n = len(prompt_ids)
    if not 0 <= length <= n:
        raise ValueError(f"a span of {length} tokens does not fit in a {n}-token prompt")
    digest = zlib.crc32(torch.tensor(list(prompt_ids), dtype=torch.int64).numpy().tobytes())
    gen = torch.Generator().manual_seed(seed * 1_000_003 + digest)
    start = int(torch.randint(0, n - length + 1, (1,), generator=gen))
    return start, start + length


def placebo_heads(head_config: Mapping[int, Sequence[int]], n_heads: int, seed: int,
                  prompt_ids: Sequence[int]) -> dict[int, tuple[int, ...]]:
    """Random heads in the same layers, drawn for one document: in each layer as many heads as
    ``head_config`` steers there, uniformly among that layer's heads that it does *not* steer
    (a control that shares a steered head is partly the treatment).

    Drawn per ``(seed, layer, document)`` (``at_probe.runs.seeding``), so every document of a run
    gets its own draw and the same document the same draw in any batch.

    Raises:
        ValueError: a layer steers more than half of its ``n_heads`` heads (too few others).
    """
    from at_probe.runs.seeding import draw_generator, prompt_digest

    digest = prompt_digest(prompt_ids)
    out = {}
    for layer, heads in head_config.items():
        others = [h for h in range(n_heads) if h not in heads]
        if len(others) < len(heads):
            raise ValueError(f"layer {layer} steers {len(heads)} of {n_heads} heads: too few other heads "
                             "for a random-heads placebo")
        gen = draw_generator(seed, "emphasis-heads", layer, digest)
        picked = torch.randperm(len(others), generator=gen)[: len(heads)].tolist()
        out[layer] = tuple(sorted(others[i] for i in picked))
    return out


@dataclass(frozen=True)
class EmphasisSteering(AttentionEdit):
    """PASTA-style emphasis of a prompt part on chosen heads (pre-softmax, every pass).

    Args:
        head_config: ``{layer: heads}`` to steer (PASTA's head config; query heads, GQA:
            ``at_probe.interventions.base.resolve_heads``), e.g. ``top_heads(rank_heads(deltas), k)``.
        alpha: weight factor of the non-emphasised prompt keys, ``0 < alpha <= 1``; default
            0.01, PASTA's (Zhang et al. 2024).
        target: the emphasised part of each prompt, ``"document"`` (default, ours: the part the
            transition also favours) or ``"instruction"``.
        placebo_seed: if set, run the control ``placebo`` instead of the steering.
        placebo: ``"span"`` (default): emphasise a random span of the target's length (``placebo_span``);
            ``"heads"``: emphasise the target on random heads, as many in each layer as
            ``head_config`` steers there, none of them steered, drawn per document
            (``placebo_heads``). The span placebo suits a short
            target (the instruction); for the document, which fills most of the prompt, a
            span of its length overlaps it almost entirely, so its control is the heads one.
    """

    head_config: Mapping[int, Sequence[int]]
    alpha: float = 0.01
    target: Target = "document"
    placebo_seed: int | None = None
    placebo: PlaceboKind = "span"

    stage: ClassVar[str] = "scores"
    needs_prompts: ClassVar[bool] = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "head_config", checked_head_config(self.head_config))
        if (
            isinstance(self.alpha, bool)
            or not isinstance(self.alpha, (int, float))
            or not 0 < self.alpha <= 1  # also refuses NaN and inf
        ):
            # No lower bound beyond 0: the edit adds log(alpha) >= -745 (the log of the smallest
            # positive double) to every key outside the span alike, so no row can become all
            # -inf (NaN after the softmax); at worst a masked entry reaches -inf in float16.
            raise ValueError(f"alpha must be a number in (0, 1], got {self.alpha!r}")
        object.__setattr__(self, "alpha", float(self.alpha))
        check_choice("emphasis target", self.target, TARGETS)
        if self.placebo_seed is not None:
            (seed,) = int_tuple("placebo_seed", [self.placebo_seed])
            object.__setattr__(self, "placebo_seed", seed)
        check_choice("emphasis placebo", self.placebo, PLACEBOS)

    def __hash__(self) -> int:
        return hash(
            (
                tuple((l, tuple(h)) for l, h in self.head_config.items()),
                self.alpha,
                self.target,
                self.placebo_seed,
                self.placebo,
            )
        )

    def _layer_heads(self, n_layers: int, n_heads: int) -> dict[int, Tensor | None]:
        resolved = config_heads(self.head_config, n_layers, n_heads)
        if self._heads_placebo:  # fail at hook time, not at the first pass
            crowded = [l for l, h in self.head_config.items() if 2 * len(h) > n_heads]
            if crowded:
                raise ValueError(f"head_config layers {crowded} steer more than half of their {n_heads} heads: "
                                 "too few other heads for the random-heads placebo")
        return resolved

    @property
    def _heads_placebo(self) -> bool:
        return self.placebo_seed is not None and self.placebo == "heads"

    def heads_for(self, prompt: Prompt, n_heads: int) -> dict[int, tuple[int, ...]]:
        """``{layer: heads}`` this steering acts on for ``prompt``: ``head_config``, or for the
        random-heads placebo that document's own draw (``placebo_heads``)."""
        if not self._heads_placebo:
            return dict(self.head_config)
        assert self.placebo_seed is not None
        return placebo_heads(self.head_config, n_heads, self.placebo_seed, prompt.ids)

    def span(self, prompt: Prompt) -> Span:
        """The key span this steering emphasises in ``prompt`` (the span placebo's random one)."""
        start, end = prompt.parts[self.target]
        if self.placebo_seed is None or self.placebo == "heads":
            return start, end
        return placebo_span(prompt.ids, end - start, self.placebo_seed)

    def _edit_(self, seq: Tensor, layer: int, heads: Tensor | None, view: SequenceView) -> tuple[int, None]:
        assert view.prompt is not None  # needs_prompts: hooks() refuses to build without them
        if self._heads_placebo:  # this document's own random heads (seq is [1, head, q, k])
            heads = torch.tensor(self.heads_for(view.prompt, seq.shape[1])[layer])
        steer_scores_(seq, self.span(view.prompt), view.prompt_length, self.alpha, heads)
        return seq.shape[-2], None


# ---------------------------------------------------------------------------------------------
# Head selection by profiling (PASTA's "model profiling", on development documents only)
# ---------------------------------------------------------------------------------------------


def profile_heads(
    model: Any,
    prompt: Prompt,
    reference: Sequence[int],
    *,
    alpha: float = 0.01,
    target: Target = "document",
    progress: Callable[[int], None] | None = None,
) -> dict[tuple[int, int], float]:
    """PASTA's profiling on one document: the reference's NLL change when each head alone is
    steered (``at_probe.interventions.profiling.profile_heads`` with ``EmphasisSteering``).

    Args:
        model: a ``TransformerBridge``.
        prompt: the document's prompt; ``reference``: the reference summary's token ids.
        alpha, target: the steering profiled.
        progress: called with 1 after each head.

    Returns:
        ``(layer, head) -> NLL(steered) - NLL(unsteered)`` in nats/token of the reference.
    """
    check_choice("emphasis target", target, TARGETS)  # before the passes, not after the first
    return profiling.profile_heads(
        model, prompt, reference, lambda layer, head: EmphasisSteering({layer: (head,)}, alpha=alpha, target=target),
        progress=progress)


# ---------------------------------------------------------------------------------------------
# Settings (``at_probe.interventions.registry``): ``emphasis:top=N,target=T,alpha=A`` and its placebo
# ---------------------------------------------------------------------------------------------

def _head_args(rankings: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """The ``top`` best heads of the development profile ``head_ranking[target]`` as ``head_config``.

    Raises:
        ValueError: the profile has no ranking for the target, or ``top`` is outside it.
    """
    target = values.get("target", EmphasisSteering.target)
    ranking = rankings.get(target)
    if ranking is None:
        raise ValueError(f"the head profile has no ranking for target {target!r}")
    return {"head_config": top_heads(ranking, values["top"])}


def _default_placebo(values: Mapping[str, Any]) -> str:
    """Random heads for the document (a span of its length would overlap it), a random span else."""
    return "heads" if values.get("target", EmphasisSteering.target) == "document" else "span"


_EMPHASIS_KEYS = {"alpha": Key(float), "target": Key(choice("emphasis target", TARGETS)),
                  "top": Key(int, field=None, required=True)}
register(Method("emphasis", EmphasisSteering, _EMPHASIS_KEYS,
                summary="PASTA emphasis of the target on the top heads of the profile (EmphasisSteering)",
                placebo=Placebo("emphasis_placebo",
                                roles={"placebo": {}, "span_placebo": {"placebo": "span"}}),
                profile="head_ranking", profile_args=_head_args))
register(Method("emphasis_placebo", EmphasisSteering,
                {**_EMPHASIS_KEYS, "seed": Key(int, field="placebo_seed", default=PLACEBO_SEED),
                 "placebo": Key(choice("emphasis placebo", PLACEBOS), default=_default_placebo)},
                summary="emphasis on random heads (the document's default) or a random span",
                profile="head_ranking", profile_args=_head_args))
