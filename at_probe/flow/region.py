"""Attention from one query row onto chosen key spans, per layer and head (a needle's share).

``RegionProbe`` hooks each layer's ``hook_pattern`` (and ``hook_v`` for the value-weighted
flow) and keeps, for one query row (e.g. the last prompt token, which predicts the answer),
the attention mass on the union of some key spans and the value-weighted flow from them
(Kobayashi et al. 2020: ``sum_j a_ij * ||v_j W_O^h||`` over the spans' keys, in units of
residual-stream norm). Works on whole passes and, block by block, under chunked attention
(``at_probe.models.chunked``): only the block holding the row is read, and the values'
norms are gathered from each block as it passes. KV-cache decode steps are ignored.

Example:
    >>> probe = RegionProbe.for_model(model, row=len(prompt) - 1, spans=[(120, 140)])
    >>> model.run_with_hooks(tokens, fwd_hooks=edit.hooks(model) + probe.hooks())
    >>> probe.mass.mean(-1)            # [layer]: mean over heads of the row's mass on the spans
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from at_probe.flow import ops
from at_probe.models.chunked import current_block, query_block
from at_probe.models.names import layer_of, pattern_hook, value_hook


class RegionProbe:
    """Mass ``[layer, head]`` and value-weighted flow ``[layer, head]`` of row ``row`` on the
    keys of ``spans`` (``[start, end)`` positions of a batch-1 pass without padding).

    Args:
        n_layers, n_heads: model shape (``for_model`` reads them).
        row: the query row (position), ``0 <= row``; a pass shorter than ``row + 1`` raises.
        spans: key spans whose union is the region.
        w_o: per layer ``[head, d_head, d_model]`` output weights, for the value-weighted flow.
    """

    def __init__(self, n_layers: int, n_heads: int, *, row: int, spans: Sequence[tuple[int, int]],
                 w_o: list[Tensor] | None = None) -> None:
        keys = sorted({k for a, b in spans for k in range(int(a), int(b))})
        if not keys or keys[0] < 0 or row < 0:
            raise ValueError(f"spans {list(spans)} give no key positions, or row {row} is negative")
        self.n_layers, self.n_heads, self.row, self.w_o = n_layers, n_heads, int(row), w_o
        self.keys = torch.tensor(keys)
        self.mass = torch.full((n_layers, n_heads), float("nan"))
        self.flow = torch.full((n_layers, n_heads), float("nan")) if w_o is not None else None
        self._norms: dict[int, Tensor] = {}

    @classmethod
    def for_model(cls, model: Any, *, value_weighted: bool = True, **kwargs: Any) -> RegionProbe:
        """A probe sized for ``model``; ``value_weighted`` reads each layer's ``W_O``."""
        w_o = ([model.blocks[l].attn.W_O.detach() for l in range(int(model.cfg.n_layers))]
               if value_weighted else None)
        return cls(int(model.cfg.n_layers), int(model.cfg.n_heads), w_o=w_o, **kwargs)

    def hooks(self) -> list[tuple[str, Any]]:
        """``(hook_name, fn)`` pairs: values (if weighted) and patterns of every layer."""
        values = [] if self.w_o is None else [(value_hook(l), self._values) for l in range(self.n_layers)]
        return values + [(pattern_hook(l), self._pattern) for l in range(self.n_layers)]

    def _values(self, values: Tensor, *, hook: Any) -> None:
        """Norms ``||v_j W_O^h||`` of the region's keys among this block's (or pass's) rows."""
        assert self.w_o is not None
        layer = layer_of(hook.name)
        block = current_block()
        start = 0 if block is None else block.start
        if block is None or block.first:  # a pass starts: the previous one's norms are stale
            self._norms[layer] = torch.zeros(self.n_heads, len(self.keys))
        inside = self.keys[(self.keys >= start) & (self.keys < start + values.shape[1])]
        if len(inside):
            with torch.no_grad():
                norms = ops.value_norms(values[0, inside - start].detach(), self.w_o[layer])  # [head, n]
            self._norms[layer][:, torch.searchsorted(self.keys, inside)] = norms.float().cpu()

    def _pattern(self, pattern: Tensor, *, hook: Any) -> None:
        block = query_block(pattern)
        if block.past:
            return  # a pass on a KV cache (a decode step): the probe reads the prompt's pass
        if pattern.shape[0] != 1:
            raise ValueError(f"RegionProbe reads one sequence at a time, got a batch of {pattern.shape[0]}")
        if not block.start <= self.row < block.end:
            if block.last and self.row >= block.end:
                raise ValueError(f"row {self.row} is past the pass's {block.total_keys} positions")
            return
        layer = layer_of(hook.name)
        keys = self.keys[self.keys < pattern.shape[-1]].to(pattern.device)
        with torch.no_grad():
            weights = pattern[0, :, self.row - block.start, :].float()  # [head, key]
            self.mass[layer] = weights[:, keys].sum(-1).cpu()
            if self.flow is not None:
                norms = self._norms.get(layer)
                if norms is None:
                    raise RuntimeError(f"RegionProbe: layer {layer}'s pattern came without its values (hook_v)")
                self.flow[layer] = (weights[:, keys].cpu() * norms[:, : len(keys)]).sum(-1)
