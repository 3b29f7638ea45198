"""Running a ``TransformerBridge`` block by block: resume a pass at any block for real.

The bridge's own ``start_at_layer`` still executes every block below the start and discards
their output, so it saves no compute. Here one pass without gradients keeps the residual
stream entering each block and the keyword arguments the blocks were called with (the
attention mask and the rotary embeddings; never the KV cache); ``run_blocks`` then calls
blocks ``start..L-1`` directly on a kept input, with whatever hooks are active
(``model.hooks(...)``), and finishes with the final norm and the unembedding. The result
equals the full pass (the same modules on the same inputs).

Example:
    >>> inputs, kwargs, logits = block_inputs(model, tokens)
    >>> with model.hooks(fwd_hooks=knockout_pairs), torch.inference_mode():
    ...     logits = run_blocks(model, inputs[20], 20, kwargs)   # blocks 20.. only
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

_NOT_REPLAYED = ("past_key_values", "use_cache")


def block_inputs(model: Any, tokens: Tensor, fwd_hooks: list | None = None,
                 keep: set[int] | None = None) -> tuple[dict[int, Tensor], dict[str, Any], Tensor]:
    """The residual stream entering each block (``[batch, T, d_model]``, or only the blocks in
    ``keep``) from one gradient-free pass with ``fwd_hooks`` active, the blocks' keyword
    arguments for ``run_blocks``, and that pass's logits ``[batch, T, vocab]``."""
    inputs: dict[int, Tensor] = {}
    block_kwargs: dict[str, Any] = {}

    def keeper(layer: int) -> Any:
        def pre_hook(module: Any, args: tuple, kwargs: dict[str, Any]) -> None:
            if keep is None or layer in keep:
                inputs[layer] = args[0].detach().clone()
            if not block_kwargs:
                block_kwargs.update({k: v for k, v in kwargs.items() if k not in _NOT_REPLAYED})
        return pre_hook

    handles = [block.register_forward_pre_hook(keeper(i), with_kwargs=True)
               for i, block in enumerate(model.blocks)]
    try:
        with torch.no_grad():
            logits = model.run_with_hooks(tokens, fwd_hooks=fwd_hooks or [])
    finally:
        for handle in handles:
            handle.remove()
    return inputs, block_kwargs, logits


def run_blocks(model: Any, resid: Tensor, start: int, block_kwargs: dict[str, Any],
               stop: int | None = None) -> Tensor:
    """Blocks ``start..stop-1`` on ``resid`` (the input of block ``start``): the residual stream
    after them, or the logits ``[batch, T, vocab]`` when ``stop`` is None (to the end)."""
    n_layers = len(model.blocks)
    for layer in range(start, n_layers if stop is None else stop):
        resid = model.blocks[layer](resid, **block_kwargs)
    if stop is not None:
        return resid
    return model.unembed(model.ln_final(resid))
