"""Which passes are one prompt: the rule every intervention shares (see ``base``)."""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import Tensor

from at_probe.models.chunked import query_block

if TYPE_CHECKING:

    from at_probe.models.prompts import Prompt

HookPair = tuple[str, Callable[..., Any]]



def lengths_of(
    prompt_lengths: Sequence[int] | int | None, prompts: Sequence[Prompt] | None
) -> list[int] | None:
    """Per-sequence prompt lengths from either argument (``prompts`` wins; they must agree)."""
    if isinstance(prompt_lengths, int):
        prompt_lengths = [prompt_lengths]
    if prompts is None:
        return None if prompt_lengths is None else list(prompt_lengths)
    lengths = [len(p) for p in prompts]
    if prompt_lengths is not None and list(prompt_lengths) != lengths:
        raise ValueError(
            f"prompt_lengths {list(prompt_lengths)} disagree with the prompts' lengths {lengths}"
        )
    return lengths


def check_lengths_fit(lengths: Sequence[int], padding: Sequence[int], total: int) -> None:
    """Refuse ``prompt_lengths`` that do not fit a pass: one per sequence, each at least 1 and
    ending within the pass's ``total`` positions after its left ``padding``.

    Raises:
        ValueError: naming the lengths, the batch, ``total`` and the padding.
    """
    if len(lengths) != len(padding) or any(not 0 < p <= total - o for o, p in zip(padding, lengths)):
        raise ValueError(f"prompt_lengths {list(lengths)} do not fit a pass of {len(padding)} sequences of "
                         f"{total} positions (left padding {list(padding)})")


_GENERATIONS: dict[int, list[object]] = {}
"""Per model (``id``), the generations in progress (a fresh marker each, innermost last). An
entry lives only while a ``generating`` block, which holds the model, is open."""

GENERATION_METHODS = ("generate", "generate_stream", "hf_generate")
"""The ``TransformerBridge`` methods that ``applied`` marks as one generation per call."""


@contextmanager
def generating(model: Any) -> Iterator[None]:
    """Context manager: the passes on ``model`` inside the block are one generation.

    Inside it, a full pass whose tokens extend the tokens of the generation's first pass
    continues that prompt (a step of ``generate(..., use_past_kv_cache=False)``). ``applied``
    puts every call of the model's generation methods in such a block; call it yourself only
    around cache-less ``generate`` with hooks registered by hand. Blocks may nest (the
    innermost is the current generation) and need not end in order.

    Example:
        >>> with model.hooks(fwd_hooks=edit.hooks(model)), generating(model):
        ...     out = model.generate(tokens, use_past_kv_cache=False, max_new_tokens=20)
    """
    marker = object()
    stack = _GENERATIONS.setdefault(id(model), [])
    stack.append(marker)
    try:
        yield
    finally:
        stack.remove(marker)
        if not stack:
            del _GENERATIONS[id(model)]


def _in_generation(model: Any, method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` (a generation method of ``model``) with each call in ``generating(model)``."""
    if inspect.isgeneratorfunction(method):  # generate_stream: the generation lasts while it yields

        @functools.wraps(method)
        def stream(*args: Any, **kwargs: Any) -> Iterator[Any]:
            with generating(model):
                yield from method(*args, **kwargs)

        return stream

    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        with generating(model):
            return method(*args, **kwargs)

    return call


_ABSENT = object()


@contextmanager
def generations_marked(model: Any) -> Iterator[None]:
    """Context manager: inside the block each call of ``model``'s generation methods
    (``GENERATION_METHODS``) is one generation (``generating``). The methods are shadowed by
    instance attributes, restored to what was there before on exit."""
    own = vars(model)
    saved: dict[str, Any] = {}
    for name in GENERATION_METHODS:
        method = getattr(model, name, None)
        if callable(method):
            saved[name] = own.get(name, _ABSENT)
            setattr(model, name, _in_generation(model, method))
    try:
        yield
    finally:
        for name, before in saved.items():
            if before is _ABSENT:
                delattr(model, name)
            else:
                setattr(model, name, before)


def _extends(tokens: Tensor | None, prompt: Tensor | None) -> bool:
    """Whether a pass's tokens are the prompt's tokens followed by at least one more. Passes
    fed embeddings (no ids on either side) cannot be compared and count as extending."""
    if tokens is None or prompt is None:
        return tokens is None and prompt is None
    return (
        tokens.shape[0] == prompt.shape[0]
        and tokens.shape[1] > prompt.shape[1]
        and torch.equal(tokens[:, : prompt.shape[1]], prompt)
    )


class PromptTracker:
    """Tells a new prompt from the continuation of the current one (the rule in the module
    docstring), for one set of hooks on ``model``.

    Hooks call ``see_tokens`` at ``embed.hook_in`` (where every pass starts) and
    ``see_attention`` first thing in every attention hook: the first attention hook of a pass
    decides (it knows whether the pass runs on a KV cache) and calls ``new_prompt`` for a new
    prompt. A pass that never reaches ``embed.hook_in`` (a replay of some blocks,
    ``at_probe.models.blocks``) belongs to the current prompt.

    Attributes:
        prompt: token ids ``[batch, T]`` of the current prompt's first pass (padding
            included), or None (no pass yet, or a pass fed embeddings).
        generation: the marker of the innermost ``generating`` block that pass ran in, or None.
    """

    def __init__(self, model: Any) -> None:
        self._model_id = id(model)  # not the model: the run (``last_report``) must not keep it alive
        self.prompt: Tensor | None = None
        self.generation: object | None = None
        self._pass_tokens: Tensor | None = None
        self._undecided = False  # a pass started and no attention hook has seen it yet
        self._warned = False

    def new_prompt(self) -> None:
        """Reset what belongs to one prompt (subclasses)."""

    @property
    def pass_decided(self) -> bool:
        """Whether the running pass's first attention hook has run, so the pass is known to start
        a prompt (``new_prompt`` was called) or to continue the current one."""
        return not self._undecided

    def see_tokens(self, tokens: Tensor, *, hook: Any = None) -> None:
        """``embed.hook_in``: a pass starts; keep its token ids (None when fed embeddings)."""
        ids = tokens.ndim == 2 and not tokens.is_floating_point()
        self._pass_tokens = tokens if ids else None
        self._undecided = True

    def see_attention(self, tensor: Tensor) -> None:
        """First thing in every attention hook (``tensor`` ``[batch, head, query, key]``): the
        first one of a pass decides whether the pass starts a new prompt."""
        if not self._undecided:
            return
        self._undecided = False
        tokens, self._pass_tokens = self._pass_tokens, None
        if query_block(tensor).past:
            return  # runs on a KV cache: a decode step of the current prompt
        stack = _GENERATIONS.get(self._model_id)
        generation = stack[-1] if stack else None
        if generation is not None and generation is self.generation and _extends(tokens, self.prompt):
            return  # a cache-less decode step of this generation
        if (generation is None and not self._warned and tokens is not None and self.prompt is not None
                and tokens.shape[1] == self.prompt.shape[1] + 1 and _extends(tokens, self.prompt)):
            self._warned = True
            warnings.warn(
                "a full pass one token longer than the previous one and starting with it, outside a "
                "generation, is a new prompt; if it is a step of generate(..., use_past_kv_cache=False) "
                "with hooks registered by hand, run it inside at_probe.interventions.base.generating(model)",
                stacklevel=3,
            )
        self.prompt = None if tokens is None else tokens.detach().clone()
        self.generation = generation
        self.new_prompt()
