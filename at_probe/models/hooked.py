"""Editing hooked activations safely: the helpers every editing hook shares.

A TransformerLens hook may replace the tensor it receives. Editing it in place is cheap (no
``T x T`` copy per layer), but wrong when something else may still hold that tensor: an
earlier hook on the same point may have kept it (the tensor itself, or ``tensor.detach()`` as
TransformerLens' cache hooks do), and autograd may have saved it for the backward pass.
``editable`` edits in place only when the editing hook is the first on its hook point, no
other tensor shares the storage and autograd does not need it; otherwise it returns a copy.
So what an earlier hook saw stays what it saw, whatever order hooks were registered in.

Padding is read from the pre-softmax scores, where the attention mask is explicit (masked keys
hold the dtype's minimum), never guessed from attention weights.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from at_probe.models.chunked import query_block

_USE_COUNT = getattr(torch._C, "_storage_Use_Count", None)


def shares_storage(tensor: Tensor) -> bool:
    """Whether another tensor (a view, a ``detach()``) holds ``tensor``'s storage.

    Reads the storage's reference count (``tensor`` itself plus the temporary handle make 2).
    Where that count is unavailable it answers True, so callers copy.
    """
    if _USE_COUNT is None:
        return True
    return _USE_COUNT(tensor.untyped_storage()._cdata) > 2


def runs_first(hook_point: Any, fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` is the first forward hook registered on ``hook_point`` (a ``HookPoint``).

    TransformerLens wraps each hook function in a closure; the first registered wrapper must
    hold ``fn``. Anything that cannot be inspected counts as "not first", so callers copy.
    """
    hooks = getattr(hook_point, "_forward_hooks", None)
    if not hooks:
        return False
    first = next(iter(hooks.values()))
    return any(getattr(cell, "cell_contents", None) is fn for cell in (getattr(first, "__closure__", None) or ()))


def editable(tensor: Tensor, hook_point: Any, fn: Callable[..., Any]) -> Tensor:
    """``tensor`` if the hook ``fn`` may edit it in place without changing what anything else
    holds (``fn`` runs first on ``hook_point``, nothing shares the storage, autograd does not
    need it), else a copy."""
    if (tensor.requires_grad and torch.is_grad_enabled()) or shares_storage(tensor) \
            or not runs_first(hook_point, fn):
        return tensor.clone()
    return tensor


def pass_padding(scores: Tensor) -> list[int]:
    """Left padding of each sequence of the pass an attention hook's scores belong to.

    Under chunked attention the pass's mask gives it (``at_probe.models.chunked.QueryBlock``):
    a block's last row may be padding. Otherwise it is ``left_padding(scores)``.
    """
    padding = query_block(scores).padding
    return list(padding) if padding is not None else left_padding(scores)


def left_padding(scores: Tensor) -> list[int]:
    """Left-padding length of each sequence of a full pass, from its pre-softmax scores.

    ``scores`` is ``[batch, head, q, k]`` with the attention mask applied. The last query row is
    a real token under left padding, and its masked keys are exactly the padding.

    Raises:
        ValueError: masked keys that are not a prefix of the last row (right padding, or a
            mask with holes), which the transition cannot place.
    """
    masked = scores[:, 0, -1, :] <= torch.finfo(scores.dtype).min / 2  # [batch, key]
    offsets = masked.sum(dim=-1)
    prefix = torch.arange(masked.shape[-1], device=masked.device)[None, :] < offsets[:, None]
    if not torch.equal(masked, prefix):
        raise ValueError("the attention mask is not left padding (masked keys after real ones in the last "
                         "row): pad on the left (tokenizer.padding_side = 'left')")
    return offsets.tolist()
