"""Editing hooked activations safely: the helpers every editing hook shares.

A TransformerLens hook may replace the tensor it receives. Editing it in place is cheap (no
``T x T`` copy per layer), but wrong when something else still holds that tensor: an earlier
hook on the same point that kept it (TransformerLens' own cache hooks keep
``tensor.detach()``, which shares storage) would see the edited values, and autograd may have
saved it for the backward pass. ``editable`` returns the tensor itself when nothing else shares
its storage, and a copy otherwise, so what an earlier hook saw stays what it saw whatever order
hooks were registered in. Padding is read from the pre-softmax scores, where the attention mask
is explicit (masked keys hold the dtype's minimum), never guessed from attention weights.
"""

from __future__ import annotations

import torch
from torch import Tensor

_USE_COUNT = getattr(torch._C, "_storage_Use_Count", None)


def shares_storage(tensor: Tensor) -> bool:
    """Whether another tensor (a view, a ``detach()``) holds ``tensor``'s storage.

    Reads the storage's reference count (``tensor`` itself plus the temporary handle make 2).
    Where that count is unavailable it answers True, so callers copy.
    """
    if _USE_COUNT is None:
        return True
    return _USE_COUNT(tensor.untyped_storage()._cdata) > 2


def editable(tensor: Tensor) -> Tensor:
    """``tensor`` if editing it in place changes nothing anyone else holds, else a copy."""
    if (tensor.requires_grad and torch.is_grad_enabled()) or shares_storage(tensor):
        return tensor.clone()
    return tensor


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
