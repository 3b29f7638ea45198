"""Attribution patching: a first-order estimate of every knockout from one forward and one
backward pass (Nanda 2023; Syed et al. 2023), instead of one pass per region and layer band.

Exact knockout (``at_probe.flow.knockout``) changes the pattern of layer ``l`` by ``dA``: rows after
a region lose their mass on it and are rescaled to their old sums. The estimate of its effect
on a metric ``M`` is ``sum_l <dM/dA_l, dA_l>``, with the gradient taken once at the unedited
pass. Per row ``q`` with sum ``s``, mass ``m_r`` on region ``r`` and ``G = dM/dA``:

    <G_q, dA_q> = -(G A)_q,r + m_r / (s - m_r) * ((G A)_q,total - (G A)_q,r)

so each layer needs only per-row, per-region sums of ``G * A``, reduced inside a gradient hook.
``attribution_sweep``'s metric is the reference's teacher-forced NLL; ``pattern_gradients``
takes any (the long-context bench's: the answer's log-probability, with the needle's keys as the
region, ``span_knockout_inner_products``). The next-token KL of exact knockout has no
first-order estimate: ``KL(base || base + d)`` is flat (zero gradient) at ``d = 0``.

Memory: the backward pass is checkpointed per block (``pattern_gradients``), so autograd holds
one block's graph at a time: the residual stream entering each block (``4 L T d_model``
bytes) is kept instead of every layer's attention pattern (``4 L H T^2``).

Example:
    >>> est = attribution_sweep(model, prompt, bounds, band_size=10, reference=ref_tokens)
    >>> est.nll_delta.shape     # [band, region]
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from at_probe.flow.knockout import KnockoutResult, knockout_regions, layer_bands
from at_probe.models.blocks import block_inputs, run_blocks
from at_probe.models.chunked import query_block
from at_probe.models.names import layer_of, pattern_hook


def knockout_inner_products(pattern: Tensor, grad: Tensor, bounds: list[int], *, first_row: int = 0) -> Tensor:
    """``<G, dA>`` of knocking out each region, summed over heads and rows: ``[region]``.

    ``pattern`` and ``grad`` are one sequence's ``[head, T, T]`` (or a block of its query rows,
    the first being row ``first_row``: chunked attention); ``bounds`` are region boundaries
    (each region ``[b_j, b_j+1)``, knocked out for rows ``>= b_j+1``, as ``ops.knockout``
    does); keys past the last boundary (e.g. a reference) belong to none.
    """
    a, g = pattern.float(), grad.float()
    edges = torch.tensor(bounds, device=a.device)
    n_regions = len(bounds) - 1
    region_of_key = torch.bucketize(torch.arange(a.shape[-1], device=a.device), edges[1:], right=True)
    # keys past the last region (the final prompt token, a reference) belong to none
    assign = torch.nn.functional.one_hot(region_of_key, n_regions + 1)[:, :n_regions].float()
    ga_keys, outside = g * a, 1.0 - assign
    mass, rest = a @ assign, a @ outside  # [head, q, region]; rest summed directly, not s - mass
    ga, ga_rest = ga_keys @ assign, ga_keys @ outside
    scale = torch.where(rest > 0, mass / rest.clamp(min=1e-30), torch.zeros_like(rest))
    per_row = -ga + scale * ga_rest  # [head, q, region]
    rows = first_row + torch.arange(a.shape[-2], device=a.device)[:, None]
    after = rows >= edges[1:][None, :]  # [q, region]: rows knocked out for each region
    return (per_row * after).sum(dim=(0, 1))


def span_knockout_inner_products(pattern: Tensor, grad: Tensor, keys: Tensor, ends: Tensor, *,
                                 first_row: int = 0) -> Tensor:
    """``<G, dA>`` of knocking out a set of keys, per head summed over rows: ``[head]``.

    Key ``keys[i]`` (distinct) is knocked out for the rows ``>= ends[i]`` (the end of the span it
    belongs to, as ``ops.knockout`` does for one span); each such row loses its mass on its knocked-out
    keys and is rescaled to its old sum. ``pattern`` and ``grad`` are one sequence's ``[head,
    q, k]`` (a block of query rows whose first is row ``first_row`` under chunked attention).
    Same per-row formula as ``knockout_inner_products``, with the knocked-out set per row.
    Keys past the block's last key are left out (no row of the block sees them).

    Raises:
        ValueError: ``keys`` are not distinct.
    """
    if keys.unique().numel() != keys.numel():
        raise ValueError("span_knockout_inner_products: keys must be distinct (a repeated key would count twice)")
    a, g = pattern.float(), grad.float()
    rows = first_row + torch.arange(a.shape[-2], device=a.device)
    inside = keys < a.shape[-1]
    cols = keys[inside]
    knocked = (rows[:, None] >= ends[inside][None, :]).float()  # [q, knocked key]
    a_k = a[..., cols]  # the knocked-out keys' columns: a handful, not a [q, k] mask of the block
    mass, ga_knocked = (a_k * knocked).sum(-1), (g[..., cols] * a_k * knocked).sum(-1)  # [head, q]
    # the rest summed directly, not s - mass: one working copy with the knocked entries zeroed
    work = a.clone() if a.data_ptr() == pattern.data_ptr() else a  # a half-precision pattern's float copy is ours
    work[..., cols] = a_k * (1.0 - knocked)
    rest = work.sum(-1)
    ga_rest = work.mul_(g).sum(-1)
    scale = torch.where(rest > 0, mass / rest.clamp(min=1e-30), torch.zeros_like(rest))
    return (-ga_knocked + scale * ga_rest).sum(-1)


def pattern_gradients(model: Any, tokens: Tensor, metric: Callable[[Tensor], Tensor],
                      reduce: Callable[[int, Tensor, Tensor, int], None], *, edits: list | None = None,
                      fwd_hooks: list | None = None) -> tuple[Tensor, Tensor]:
    """One pass of ``tokens``, then the gradient of ``metric`` with respect to every layer's
    attention pattern, handed to ``reduce`` instead of kept.

    The pass runs without gradients with ``edits`` (an intervention's hooks) and ``fwd_hooks``
    (e.g. a probe) and keeps each block's input; then from the last block down each block is
    run again with gradients and ``edits`` and differentiated alone (checkpointed: autograd holds
    one block's patterns at a time; one extra forward pass of compute). ``metric`` maps the
    logits ``[batch, T, vocab]`` to a scalar; ``reduce(layer, pattern, grad, first_row)`` gets
    each ``hook_pattern`` tensor (detached) with its gradient, once per block of query rows
    under chunked attention. Returns the first pass's logits and the metric's value.
    """
    with torch.inference_mode(False):  # callable inside an inference-mode block too
        return _pattern_gradients(model, tokens, metric, reduce, edits or [], fwd_hooks or [])


def _pattern_gradients(model: Any, tokens: Tensor, metric: Callable[[Tensor], Tensor],
                       reduce: Callable[[int, Tensor, Tensor, int], None], edits: list,
                       fwd_hooks: list) -> tuple[Tensor, Tensor]:
    n_layers = int(model.cfg.n_layers)
    inputs, block_kwargs, logits = block_inputs(model, tokens, edits + fwd_hooks)

    def watch(pattern: Tensor, *, hook: Any) -> None:
        layer, kept, first = layer_of(hook.name), pattern.detach(), query_block(pattern).start
        pattern.register_hook(lambda grad: reduce(layer, kept, grad, first))

    watches = [(pattern_hook(layer), watch) for layer in range(n_layers)]
    with _weights_frozen(model), torch.enable_grad(), model.hooks(fwd_hooks=edits + watches):
        for layer in reversed(range(n_layers)):
            x = inputs.pop(layer).requires_grad_(True)
            last = layer == n_layers - 1
            out = run_blocks(model, x, layer, block_kwargs, stop=None if last else layer + 1)
            if last:
                value = metric(out)
                (grad,) = torch.autograd.grad(value, x)  # fires the pattern hooks; no weight gradients
            else:
                (grad,) = torch.autograd.grad(out, x, grad_outputs=grad)
    return logits, value.detach()


def attribution_sweep(
    model: Any,
    prompt: Tensor,
    bounds: Tensor,
    *,
    reference: Tensor,
    band_size: int = 2,
    labels: list[str] | None = None,
    transition: Any | None = None,
) -> KnockoutResult:
    """First-order estimate of ``knockout_sweep``'s NLL change for every band and region.

    Same arguments and region conventions as ``at_probe.flow.knockout.knockout_sweep`` (the final
    prompt token is never knocked out as a key). Returns a ``KnockoutResult`` whose
    ``nll_delta`` holds the estimates and whose ``kl`` is None (no first-order estimate).
    One forward and one checkpointed backward pass (``pattern_gradients``).
    """
    t = prompt.shape[1]
    tokens = torch.cat((prompt, reference.to(prompt.device)), dim=1)
    bands = layer_bands(int(model.cfg.n_layers), band_size)
    labels, edges = knockout_regions(bounds, labels, t)
    per_layer = torch.zeros(int(model.cfg.n_layers), len(labels))

    def reduce(layer: int, pattern: Tensor, grad: Tensor, first: int) -> None:
        per_layer[layer] += knockout_inner_products(pattern[0], grad[0], edges, first_row=first).cpu()

    def nll(logits: Tensor) -> Tensor:
        logp = logits[0].float().log_softmax(-1)
        return -logp[t - 1 : -1].gather(-1, tokens[0, t:, None]).mean()

    edits = [] if transition is None else transition.hooks(model, prompt_lengths=t)
    _, value = pattern_gradients(model, tokens, nll, reduce, edits=edits)
    estimate = torch.stack([per_layer[s:e].sum(0) for s, e in bands])
    return KnockoutResult(bands, labels, None, estimate, float(value))


@contextmanager
def _weights_frozen(model: Any) -> Iterator[None]:
    """Parameters stop requiring gradients inside the block (autograd then keeps no inputs of
    the linear layers for weight gradients); restored on exit."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)
