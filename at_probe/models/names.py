"""Hook names: the only place TransformerLens hook strings are built or parsed."""

from __future__ import annotations

import numbers
import re

EMBED_INPUT_HOOK = "embed.hook_in"
"""Hook that sees the token ids ``[batch, pos]`` of every forward pass."""

_LAYER_RE = re.compile(r"^blocks\.(\d+)\.attn\.")


def scores_hook(layer: int) -> str:
    """Name of the pre-softmax attention score hook of ``layer`` (``[batch, head, q, k]``; masked
    entries hold the dtype's minimum)."""
    return f"blocks.{layer}.attn.hook_attn_scores"


def value_hook(layer: int) -> str:
    """Name of the value hook of ``layer`` (``[batch, pos, kv_head, d_head]``)."""
    return f"blocks.{layer}.attn.hook_v"


def pattern_hook(layer: int) -> str:
    """Name of the post-softmax attention pattern hook of ``layer`` (``[batch, head, q, k]``)."""
    return f"blocks.{layer}.attn.hook_pattern"


def layer_of(hook_name: str) -> int:
    """Layer index of an attention hook name, ``blocks.{l}.attn.*`` (the bridge reports some
    aliases by their own name: ``hook_v`` arrives as ``blocks.{l}.attn.v.hook_out``).

    Raises:
        ValueError: the name is not an attention hook of a block.
    """
    match = _LAYER_RE.match(hook_name)
    if match is None:
        raise ValueError(f"not an attention hook name: {hook_name!r}")
    return int(match.group(1))


def resolve_layers(layers: object, allowed: range, *, what: str = "the model's layers") -> tuple[int, ...]:
    """Validate explicit layer indices; ``None`` means every layer of ``allowed``.

    Raises:
        ValueError: an index is not an int in ``allowed``, or appears twice.
    """
    out = tuple(allowed) if layers is None else tuple(layers)  # type: ignore[call-overload]
    bad = [l for l in out if isinstance(l, bool) or not isinstance(l, numbers.Integral) or l not in allowed]
    if bad:
        raise ValueError(f"layers {bad} are outside {what} ({allowed.start}..{allowed.stop - 1})")
    if len(set(out)) != len(out):
        raise ValueError(f"duplicate layer indices in {list(out)}")
    return tuple(int(l) for l in out)
