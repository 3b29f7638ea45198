"""Attention over blocks of query rows: exact hooks without a ``T x T`` pattern.

The bridge's Llama attention (TransformerLens' ``PositionEmbeddingsAttentionBridge``) computes
scores, mask, softmax and the product with V in one forward, holding a ``[batch, heads, T, T]``
pattern per layer. Every row of that computation depends only on its own query and the keys,
so running the same forward over blocks of ``rows`` query rows, each against the keys it may
see, gives the same output while no more than ``[batch, heads, rows, K]`` is ever held.

Under ``chunked_attention(model)`` each attention layer runs the bridge's own forward once per
block, so every hook inside the attention module (``hook_attn_scores``, ``hook_pattern``,
``hook_q``/``hook_k``/``hook_v``, ``hook_z``, ``hook_out``, ...) fires once per block with that
block's rows; hooks outside it (residual stream, MLP) see whole passes as before.
``query_block(tensor)`` tells a hook which rows it holds, the same way for a full prefill, a
block of one and a KV-cache decode step, so one hook serves all three.

``causal_keys=True`` (the default) gives each block only the keys it can see: a block of
query rows ``[s, e)`` gets ``K = past + e`` keys. ``causal_keys=False`` gives every block all
``past + T`` keys (the keys after a row are masked, as in the stock pattern).

An edit whose rows depend on later rows asks for a pre-pass (``request_prepass``): the
layer's blocks run once more up to the softmax, every other hook of the attention suspended,
and a reader sees each block's pattern first (ACT's hidden sinks are column means over every
prompt row).

What needs the whole pattern refuses: ``run_with_cache`` (it would keep only the last block of
each attention hook) raises ``ChunkedAttentionError``, and so does ``FlowProbe(rollout=True)``.

Exactness: every real (non-padding) token's output equals the stock forward's bit for bit in
the tests (CPU, blocks of 32 rows or more; the product with V adds the keys as the stock one
does: over each block's keys rounded up to 512 where this device's kernels give the same sums
that way, ``at_probe.models.value_product``, else over every key). Rows of left padding, which
attend to nothing real, spread their weight over the keys of their block rather than of the
pass, so their (unused) outputs differ. With
``causal_keys=False`` on an empty cache the keys after the block are zero placeholders (masked
for every row that may not see them), so a scores hook sees the mask's value there.
On a CPU with glibc, each forward raises the allocator's mmap threshold to the size of a
block's scores, so that the few such tensors each block allocates reuse freed heap memory
instead of fresh pages from the OS (``at_probe.runs.memory.heap_allocations_up_to``; that
was 13 million page faults and a third of the time at 8,192 tokens).
Limits: forward hooks only on the attention's hook points (a backward hook on
``hook_pattern`` would see the pattern padded with zero weights); one forward at a time (the running
block is process-wide state); exactness on GPUs is untested.

Example:
    >>> with at_probe.chunked_attention(model, rows=512):
    ...     logits = model(tokens)                     # equal to model(tokens) without it
    >>> def hook(pattern, *, hook):
    ...     block = query_block(pattern)               # rows block.start .. block.start + block.rows - 1
"""

from __future__ import annotations

import numbers
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor

from at_probe.models.value_product import PRODUCT_KEYS, product_span, sums_in_key_order
from at_probe.runs.memory import heap_allocations_up_to

_ACTIVE: list[QueryBlock] = []  # the block whose hooks are running (forwards run one at a time)
_STATE = "_at_probe_chunked"  # model attribute: the ChunkedAttention in force
_PREPASS = "_at_probe_prepass"  # attention module attribute: the readers of its next forward's pre-pass
PrepassReader = Callable[[Tensor, "QueryBlock"], None]


class ChunkedAttentionError(RuntimeError):
    """An operation that needs whole attention patterns, asked for under chunked attention."""


@dataclass(frozen=True)
class ChunkedAttention:
    """The chunking in force on a model (``chunking(model)``)."""

    rows: int
    causal_keys: bool


@dataclass(frozen=True)
class QueryBlock:
    """Which query rows an attention hook's ``[batch, head, rows, keys]`` tensor holds.

    Positions count keys: the cache's keys first, then the pass's tokens (left padding
    included).

    Attributes:
        start: position of the block's first query row (``past`` for a pass's first block; the
            new token's position at a KV-cache decode step).
        rows: query rows in the block.
        keys: keys the block's tensor holds (``past + end`` with causal keys, else
            ``past + length``).
        past: keys in the KV cache before this pass (0 for a full pass).
        length: query rows of the whole pass.
        padding: left padding of each sequence, read from the pass's attention mask, or None
            where the hook must read it from the scores (an unchunked pass).
        prepass: whether the block belongs to a pre-pass (``request_prepass``), not the pass.
    """

    start: int
    rows: int
    keys: int
    past: int
    length: int
    padding: tuple[int, ...] | None = None
    prepass: bool = False

    @property
    def end(self) -> int:
        """Position after the block's last query row."""
        return self.start + self.rows

    @property
    def first(self) -> bool:
        """Whether the block holds the pass's first query row."""
        return self.start == self.past

    @property
    def last(self) -> bool:
        """Whether the block holds the pass's last query row."""
        return self.end == self.past + self.length

    @property
    def total_keys(self) -> int:
        """Keys of the whole pass (cache included): ``past + length``."""
        return self.past + self.length


def query_block(tensor: Tensor) -> QueryBlock:
    """The query rows of an attention hook's tensor ``[batch, head, q, k]``.

    Inside a chunked forward: the running block. Otherwise the tensor is a whole pass: its
    ``q`` rows are the last ``q`` of ``k`` positions (``start = k - q``: 0 for a full pass, the
    new token's position at a decode step)."""
    q, k = int(tensor.shape[-2]), int(tensor.shape[-1])
    if _ACTIVE and _ACTIVE[-1].rows == q and _ACTIVE[-1].keys == k:
        return _ACTIVE[-1]
    return QueryBlock(start=k - q, rows=q, keys=k, past=k - q, length=q)


def current_block() -> QueryBlock | None:
    """The block a chunked forward is running (for hooks on ``[batch, pos, ...]`` tensors inside
    the attention module, such as ``hook_v``), or None outside one."""
    return _ACTIVE[-1] if _ACTIVE else None


def chunking(model: Any) -> ChunkedAttention | None:
    """The chunked attention in force on ``model``, or None."""
    return vars(model).get(_STATE)


def refuse_chunked(model: Any, what: str, why: str) -> None:
    """Raise ``ChunkedAttentionError`` naming ``what`` and ``why`` if ``model`` runs chunked."""
    if chunking(model) is not None:
        raise ChunkedAttentionError(f"{what} is not available under chunked attention: {why}; "
                                    "run it outside at_probe.chunked_attention(model)")


def request_prepass(model: Any, layer: int, reader: PrepassReader, *, owner: object = None) -> None:
    """Ask for a pre-pass of ``layer``'s next chunked attention forward: before its blocks run,
    they run once more up to the softmax, with every hook of the attention module suspended,
    and ``reader(pattern, block)`` gets each block's pattern ``[batch, head, rows, keys]`` as the
    bridge computes it (``block.prepass`` is True).

    For edits whose rows depend on later rows (ACT's hidden sinks are column means over every
    prompt row): call it from a hook that fires before the layer's attention, such as
    ``blocks.{layer}.ln1.hook_out``. The next forward of that attention takes the request: a
    pass of one block runs no pre-pass (its hooks see every row), nor does a pass on a KV cache
    (the pre-pass never writes the cache, so it sees only a prefill's keys). A later request of
    the same ``owner`` (default: the reader) replaces an earlier one not yet taken; enabling or
    disabling chunked attention drops them all. Costs the layer's query, key and value
    projections, rotation, scores and softmax once more, not the product with the values.
    """
    requests = vars(model.blocks[layer].attn).setdefault(_PREPASS, {})
    requests[id(reader if owner is None else owner)] = reader


@contextmanager
def marked_chunked(model: Any, rows: int | None) -> Iterator[Any]:
    """Inside the block ``chunking(model)`` says ``rows`` (causal keys), without touching the
    attention (None: nothing changes): for checking that interventions accept chunked attention
    on a model that never runs (``at_probe.models.loading.ModelShape``)."""
    if rows is None or chunking(model) is not None:
        yield model
        return
    object.__setattr__(model, _STATE, ChunkedAttention(_check_rows(rows), True))
    try:
        yield model
    finally:
        vars(model).pop(_STATE, None)


def attention_modules(model: Any) -> list[Any]:
    """Every layer's attention module, checked to be the bridge class chunking supports.

    Raises:
        TypeError: a layer whose attention is another class (its forward is not known to
            compute rows independently).
    """
    from transformer_lens.model_bridge.generalized_components.position_embeddings_attention import (
        PositionEmbeddingsAttentionBridge,
    )

    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise TypeError(f"chunked attention needs a TransformerBridge, got {type(model).__name__}")
    modules = [block.attn for block in blocks]
    for layer, attn in enumerate(modules):
        if type(attn) is not PositionEmbeddingsAttentionBridge:
            raise TypeError(f"chunked attention runs the bridge's PositionEmbeddingsAttentionBridge (Llama-family "
                            f"attention); layer {layer} has {type(attn).__name__}")
    return modules


def _check_rows(rows: int) -> int:
    if isinstance(rows, bool) or not isinstance(rows, numbers.Integral) or rows < 1:
        raise ValueError(f"rows must be a positive integer, got {rows!r}")
    return int(rows)


def enable_chunked_attention(model: Any, rows: int = 512, *, causal_keys: bool = True) -> None:
    """Make every attention layer of ``model`` run over blocks of ``rows`` query rows until
    ``disable_chunked_attention(model)`` (``chunked_attention`` is the scoped form).

    Raises:
        ValueError: ``rows`` not a positive integer.
        TypeError: a model whose attention is not the bridge's Llama attention.
    """
    rows = _check_rows(rows)
    modules = attention_modules(model)
    for attn in modules:
        vars(attn).pop(_PREPASS, None)
        # the instance attribute shadows the class's forward (the bridge's setattr would forward it)
        object.__setattr__(attn, "forward", _chunked_forward(attn, rows, causal_keys))
    object.__setattr__(model, _STATE, ChunkedAttention(rows, bool(causal_keys)))
    object.__setattr__(model, "run_with_cache", _refusing_run_with_cache)


def disable_chunked_attention(model: Any) -> None:
    """Undo ``enable_chunked_attention`` (a no-op when it is not in force)."""
    for block in getattr(model, "blocks", []):
        vars(block.attn).pop("forward", None)
        vars(block.attn).pop(_PREPASS, None)
    vars(model).pop(_STATE, None)
    vars(model).pop("run_with_cache", None)


@contextmanager
def chunked_attention(model: Any, rows: int = 512, *, causal_keys: bool = True) -> Iterator[Any]:
    """Context manager: ``model``'s attention runs over blocks of ``rows`` query rows inside
    the block (module docstring); what was in force before is restored on exit. Yields the model.

    Args:
        model: a ``TransformerBridge`` of a Llama-family model.
        rows: query rows per block (a pass of at most ``rows`` tokens runs as one block).
        causal_keys: each block gets only the keys it can see (``K = past + end``); False:
            every block gets all ``past + T`` keys.

    Raises:
        ValueError: ``rows`` not a positive integer.
        TypeError: a model whose attention is not the bridge's Llama attention.
    """
    before = chunking(model)
    enable_chunked_attention(model, rows, causal_keys=causal_keys)
    try:
        yield model
    finally:
        disable_chunked_attention(model)
        if before is not None:
            enable_chunked_attention(model, before.rows, causal_keys=before.causal_keys)


def _refusing_run_with_cache(*args: Any, **kwargs: Any) -> Any:
    raise ChunkedAttentionError(
        "run_with_cache is not available under chunked attention: it keeps one tensor per hook point, so "
        "each attention hook would hold only its last block of query rows; reduce inside hooks "
        "(run_with_hooks, FlowProbe) or run it outside at_probe.chunked_attention(model)")


def mask_padding(mask: Tensor | None, batch: int) -> tuple[int, ...] | None:
    """Left padding per sequence from a pass's attention mask ``[batch, 1, q, k]`` (additive
    float or boolean "may attend"; its last query row is a real token under left padding), or
    None where the mask does not say (none, not 4D, or not left padding: a hook then reads the
    padding off its scores, and refuses right padding, as without chunking)."""
    if mask is None or mask.ndim < 4:
        return None
    row = mask[:, 0, -1, :]
    masked = ~row if row.dtype == torch.bool else row <= torch.finfo(row.dtype).min / 2
    offsets = masked.sum(-1)
    prefix = torch.arange(masked.shape[-1], device=masked.device)[None, :] < offsets[:, None]
    if not torch.equal(masked, prefix):
        return None
    return tuple(int(o) for o in offsets.expand(batch).tolist())


class _BlockKeys:
    """Stands in for the KV cache inside one chunked forward: keeps each block's keys and
    values and returns those the next block may see (all values: ``_pad_keys``).

    On an empty cache (a prefill) the pass's keys and values go into one buffer, already
    repeated for the query heads of each key-value head (GQA, as ``repeat_kv`` would), while
    the forward's own repeat is switched off (``expanded``): repeating the growing keys in
    every block would copy them ``T / rows`` times. The real cache gets the pass's keys once,
    after the last block. On a cache that already holds keys each block is appended to it."""

    def __init__(self, cache: Any, causal_keys: bool, past: int, total: int, groups: int,
                 unit: int | None) -> None:
        self.cache, self.causal_keys, self.past, self.total, self.groups = cache, causal_keys, past, total, groups
        self.unit = unit  # product_span's: the values returned cover the keys the product sums over
        self.keys: Tensor | None = None
        self.values: Tensor | None = None
        self.filled = 0

    @property
    def expanded(self) -> bool:
        """Whether the returned keys and values are already repeated for every query head."""
        return self.cache is None or not self.past

    def update(self, k: Tensor, v: Tensor, layer_idx: int, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        if not self.expanded:
            keys, values = self.cache.update(k, v, layer_idx, *args, **kwargs)
            if not self.causal_keys:
                keys = _zero_pad(keys, self.total)
            return keys, _zero_pad(values, product_span(keys.shape[-2], self.total, self.unit))
        if torch.is_grad_enabled():  # autograd may save any block's keys: no shared buffer then
            return self._differentiable(k, v, layer_idx)
        if self.keys is None:  # zeros past the filled rows: masked for every row that cannot see them
            heads = k.shape[1] * self.groups
            self.keys = k.new_zeros(k.shape[0], heads, self.total, k.shape[-1])
            self.values = v.new_zeros(v.shape[0], heads, self.total, v.shape[-1])
        assert self.values is not None
        n = k.shape[-2]
        self.keys[..., self.filled : self.filled + n, :] = k.repeat_interleave(self.groups, dim=1)
        self.values[..., self.filled : self.filled + n, :] = v.repeat_interleave(self.groups, dim=1)
        self.filled += n
        if self.cache is not None and self.filled == self.total:  # one key-value head of each group
            self.cache.update(self.keys[:, :: self.groups].contiguous(), self.values[:, :: self.groups].contiguous(),
                              layer_idx, *args, **kwargs)
        stop = self.filled if self.causal_keys else self.total
        return self.keys[..., :stop, :], self.values[..., : product_span(stop, self.total, self.unit), :]

    def _differentiable(self, k: Tensor, v: Tensor, layer_idx: int) -> tuple[Tensor, Tensor]:
        """``update`` without writing into a buffer that autograd saved for an earlier block
        (a backward pass through the blocks: attribution patching; there is no cache then)."""
        k, v = k.repeat_interleave(self.groups, dim=1), v.repeat_interleave(self.groups, dim=1)
        self.keys = k if self.keys is None else torch.cat([self.keys, k], dim=-2)
        self.values = v if self.values is None else torch.cat([self.values, v], dim=-2)
        self.filled = self.keys.shape[-2]
        if self.cache is not None and self.filled == self.total:
            self.cache.update(self.keys[:, :: self.groups], self.values[:, :: self.groups], layer_idx)
        keys = self.keys if self.causal_keys else _zero_pad(self.keys, self.total)
        return keys, _zero_pad(self.values, product_span(keys.shape[-2], self.total, self.unit))


def _zero_pad(t: Tensor, length: int) -> Tensor:
    """``t`` ``[..., n, d]`` with zero rows appended up to ``length``."""
    pad = length - t.shape[-2]
    return t if pad <= 0 else torch.cat([t, t.new_zeros(*t.shape[:-2], pad, t.shape[-1])], dim=-2)


def _pad_keys(module: Any, args: Any, pattern: Tensor, *, padded: list[Tensor], total: int,
              unit: int | None) -> Tensor:
    """The block's pattern with zero weights on the keys it cannot see, up to
    ``product_span``'s keys, for the product with the values: that product then adds the
    visible keys as the stock forward's product over all keys does, in the same order, so the
    output is the stock output bit for bit (a sum over just the visible keys can round
    differently in the matrix-multiply kernels).

    One zeroed buffer serves every block of a layer's pass: a block writes its first ``K``
    columns, and the causal blocks that follow have at least as many, so the columns past a
    block's keys are still zero (a fresh buffer per block costs more than the product itself)."""
    batch, heads, rows, keys = pattern.shape
    span = product_span(keys, total, unit)
    if keys >= span:
        return pattern
    if torch.is_grad_enabled():  # autograd may keep each block's padded pattern: no shared buffer
        return torch.nn.functional.pad(pattern, (0, span - keys))
    if not padded:
        padded.append(pattern.new_zeros(batch, heads, rows, total))
    out = padded[0][:, :, :rows, :span]
    out[..., :keys] = pattern
    return out


def _past_length(cache: Any, layer: int | None) -> int:
    if cache is None or layer is None:
        return 0
    return int(cache.get_seq_length(layer))


def _spans(n: int, rows: int) -> list[tuple[int, int]]:
    """The blocks' query rows ``[s, e)`` of a pass of ``n`` rows."""
    return [(s, min(n, s + rows)) for s in range(0, n, rows)]


def _block_kwargs(kwargs: dict[str, Any], keys: _BlockKeys, mask: Tensor, s: int, e: int, n: int) -> dict[str, Any]:
    """The stock forward's keyword arguments for the block of rows ``[s, e)`` of an ``n``-row pass."""
    out = dict(kwargs, past_key_values=keys, attention_mask=mask[..., s:e, :])
    embeddings = kwargs.get("position_embeddings")
    if embeddings is not None:
        out["position_embeddings"] = tuple(p[..., s:e, :] for p in embeddings)
    for name in ("position_ids", "cache_position"):
        value = kwargs.get(name)
        if isinstance(value, Tensor) and value.shape[-1] == n:
            out[name] = value[..., s:e]
    return out


class _PrepassDone(Exception):
    """Raised after a pre-pass block's pattern: the rest of that block's forward is not needed."""


def _run_prepass(attn: Any, stock: Any, readers: list[PrepassReader],
                 blocks: list[tuple[QueryBlock, Tensor, dict[str, Any]]], rest: tuple[Any, ...]) -> None:
    """Each block's forward up to its pattern, every hook of the attention module suspended
    (``request_prepass``), the pattern handed to ``readers``."""
    def read(module: Any, args: Any, pattern: Tensor) -> None:
        for reader in readers:
            reader(pattern, _ACTIVE[-1])
        raise _PrepassDone

    modules = list(attn.modules())
    saved = [(m, m._forward_hooks, m._forward_pre_hooks) for m in modules]
    for m in modules:  # past the bridge's own __setattr__, which would forward to the wrapped module
        object.__setattr__(m, "_forward_hooks", OrderedDict())
        object.__setattr__(m, "_forward_pre_hooks", OrderedDict())
    attn.hook_pattern.register_forward_hook(read)
    try:
        with torch.no_grad():
            for block, hidden, kwargs in blocks:
                _ACTIVE.append(block)
                try:
                    stock(hidden, *rest, **kwargs)
                except _PrepassDone:
                    pass
                finally:
                    _ACTIVE.pop()
    finally:
        for m, hooks, pre_hooks in saved:
            object.__setattr__(m, "_forward_hooks", hooks)
            object.__setattr__(m, "_forward_pre_hooks", pre_hooks)


def _chunked_forward(attn: Any, rows: int, causal_keys: bool) -> Any:
    """The bridge's own forward run over blocks of ``rows`` query rows (module docstring)."""
    stock = type(attn).forward.__get__(attn)

    def forward(*args: Any, **kwargs: Any) -> tuple[Tensor, None]:
        if "hidden_states" in kwargs:
            hidden, rest = kwargs.pop("hidden_states"), args
        else:
            hidden, rest = args[0], args[1:]
        n = int(hidden.shape[1])
        readers = list(vars(attn).pop(_PREPASS, {}).values())  # this forward takes the requests
        mask = kwargs.get("attention_mask")
        cache = kwargs.get("past_key_values")
        past = _past_length(cache, getattr(attn, "_layer_idx", None))
        total = past + n
        if n <= rows:  # one block: the stock forward itself (its hooks read the padding off the scores)
            _ACTIVE.append(QueryBlock(past, n, total, past, n))
            try:
                out, _ = stock(hidden, *rest, **kwargs)
            finally:
                _ACTIVE.pop()
            return out, None
        if mask is not None and mask.ndim < 4:
            raise ValueError(f"chunked attention needs the 4D attention mask Hugging Face builds, got {mask.ndim}D")
        if mask is None:  # the stock forward's own causal mask assumes the last rows: make it explicit
            positions = torch.arange(total, device=hidden.device)
            mask = (positions[None, :] <= positions[past:, None])[None, None]
        padding = mask_padding(mask, int(hidden.shape[0]))  # a block's last row may be padding
        hf_attn = attn.original_component
        if hidden.device.type == "cpu":  # the blocks' scores and weights: reused, not mapped anew each time
            heads = int(hf_attn.config.num_attention_heads)
            width = max(hidden.element_size(), 4)  # the softmax runs in float32
            heap_allocations_up_to(int(hidden.shape[0]) * heads * rows * total * width)
        groups = int(getattr(hf_attn, "num_key_value_groups", 1))
        exact_short = sums_in_key_order(str(hidden.device), hidden.dtype, rows, int(hf_attn.head_dim))
        unit = PRODUCT_KEYS if exact_short else None  # else every key, as the stock product
        keys = _BlockKeys(cache, causal_keys, past, total, groups, unit)
        padded: list[Tensor] = []  # one zeroed [batch, head, rows, total] buffer, made by the first block
        outputs = []
        if keys.expanded and groups > 1:
            hf_attn.num_key_value_groups = 1  # the keys come repeated (_BlockKeys); restored below
        try:
            if readers and not past:  # its own keys and values (freed after it), never the cache
                prepass = _BlockKeys(None, causal_keys, 0, total, groups, unit)
                _run_prepass(attn, stock, readers, [
                    (QueryBlock(s, e - s, e if causal_keys else total, 0, n, padding, prepass=True),
                     hidden[:, s:e], _block_kwargs(kwargs, prepass, mask, s, e, n)) for s, e in _spans(n, rows)], rest)
                del prepass
            for s, e in _spans(n, rows):
                block_kwargs = _block_kwargs(kwargs, keys, mask, s, e, n)
                _ACTIVE.append(QueryBlock(past + s, e - s, past + e if causal_keys else total, past, n, padding))
                # registered last, so it runs after every other hook on the pattern
                pad = partial(_pad_keys, padded=padded, total=total, unit=unit)
                handle = attn.hook_pattern.register_forward_hook(pad)
                try:
                    out, _ = stock(hidden[:, s:e], *rest, **block_kwargs)
                finally:
                    handle.remove()
                    _ACTIVE.pop()
                outputs.append(out)
        finally:
            if keys.expanded and groups > 1:
                hf_attn.num_key_value_groups = groups
        return torch.cat(outputs, dim=1), None

    return forward
