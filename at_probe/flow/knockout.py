"""Attention knockout: a causal measure of information transfer from a context region.

In a band of layers, attention from every row after a region to the region's keys is zeroed
and the rows renormalised (``ops.knockout``); the final prompt token (where the effect is read)
is never itself knocked out, so its row is always "after" the region. The effect is read at the end of the prompt:
the KL divergence of the next-token distribution (``KL(base || knocked)``, nats) and, when a
reference continuation is given (e.g. the XSum summary), the change of its teacher-forced
mean NLL (nats/token). One forward pass per (region, band) gives both, because the prompt's
last position cannot see the appended reference.

Example:
    >>> res = knockout_sweep(model, prompt_tokens, bounds, band_size=2, reference=ref_tokens)
    >>> res.kl.shape    # [band, region]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from at_probe.flow import ops
from at_probe.models.blocks import block_inputs, run_blocks
from at_probe.models.chunked import query_block
from at_probe.models.hooked import editable
from at_probe.models.names import pattern_hook


@dataclass
class KnockoutResult:
    """KL and NLL changes per (layer band, region).

    Attributes:
        bands: ``[start, end)`` layer bands.
        region_labels: labels of the knocked-out regions (``"sink"``, ``"doc 01"``, ...).
        kl: ``[band, region]`` KL(base || knocked) of the next-token distribution (nats); None
            for an attribution estimate (the KL has no first-order estimate: its gradient at
            the base distribution is zero).
        nll_delta: ``[band, region]`` knocked minus base reference NLL (nats/token), or None.
        base_nll: the reference's mean NLL without knockout, or None.
    """

    bands: list[tuple[int, int]]
    region_labels: list[str]
    kl: Tensor | None
    nll_delta: Tensor | None
    base_nll: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "bands": [list(b) for b in self.bands],
            "region_labels": self.region_labels,
            "kl": None if self.kl is None else self.kl.tolist(),
            "nll_delta": None if self.nll_delta is None else self.nll_delta.tolist(),
            "base_nll": self.base_nll,
        }


def layer_bands(n_layers: int, band_size: int) -> list[tuple[int, int]]:
    """Consecutive ``[start, end)`` bands of ``band_size`` layers (the last may be shorter)."""
    if band_size < 1:
        raise ValueError(f"band_size must be >= 1, got {band_size}")
    return [(s, min(s + band_size, n_layers)) for s in range(0, n_layers, band_size)]


def knockout_regions(bounds: Tensor, labels: list[str] | None, prompt_len: int) -> tuple[list[str], list[int]]:
    """Labels and key boundaries of the regions to knock out, shared by exact knockout and its
    attribution estimate. Boundaries are capped at the final prompt token, which is where the
    effect is read and so is never knocked out as a key (the last region's knockout reaches it).

    Raises:
        ValueError: ``labels`` does not name every region.
    """
    labels = ops.region_labels(bounds) if labels is None else list(labels)
    if len(labels) != len(bounds) - 1:
        raise ValueError(f"{len(labels)} labels for {len(bounds) - 1} regions")
    return labels, [min(int(x), prompt_len - 1) for x in bounds.tolist()]


def knockout_hooks(start: int, end: int, layers: range) -> list[tuple[str, Any]]:
    """Hooks blocking attention to keys ``[start, end)`` at ``layers`` (full passes, whole or
    block by block under chunked attention; decode steps are left alone)."""

    def fn(pattern: Tensor, *, hook: Any) -> Tensor | None:
        block = query_block(pattern)
        if block.past:
            return None
        # a copy if anything else may hold it
        return ops.knockout_(editable(pattern, hook, fn), start, end, first_row=block.start)

    return [(pattern_hook(l), fn) for l in layers]


def knockout_sweep(
    model: Any,
    prompt: Tensor,
    bounds: Tensor,
    *,
    band_size: int = 2,
    labels: list[str] | None = None,
    reference: Tensor | None = None,
    transition: Any | None = None,
    progress: bool = True,
) -> KnockoutResult:
    """Knock out each region in each layer band and measure the change at the prompt's end.

    Args:
        model: a ``TransformerBridge``.
        prompt: ``[1, T]`` prompt token ids.
        bounds: region boundaries (``FlowResult.region_bounds``, ``ops.prompt_regions``).
        band_size: layers per band.
        labels: one label per region (``FlowResult.region_labels``); default token ranges.
        reference: ``[1, N]`` continuation token ids (no BOS) for the NLL change, or None.
        transition: a transition (``PaperTransition`` ...) active in every pass, on the prompt
            rows only; knockout is applied after it.
        progress: show a progress bar.

    The base pass keeps the residual stream entering each band's first block; a knockout pass
    runs only the blocks from there on (``at_probe.models.blocks.run_blocks``), since the blocks
    below the band see no knockout.
    """
    t = prompt.shape[1]
    tokens = prompt if reference is None else torch.cat((prompt, reference.to(prompt.device)), dim=1)
    bands = layer_bands(int(model.cfg.n_layers), band_size)
    labels, b = knockout_regions(bounds, labels, t)
    edits = [] if transition is None else transition.hooks(model, prompt_lengths=t)
    inputs, block_kwargs, base_logits = block_inputs(model, tokens, edits, keep={s for s, _ in bands})

    def read(logits: Tensor) -> tuple[Tensor, Tensor | None]:
        """Next-token log-probabilities at the prompt's end, and the reference's NLL."""
        logp = logits[t - 1 :].float().log_softmax(-1)  # only the positions that are read
        nll = None if reference is None else -logp[:-1].gather(-1, tokens[0, t:, None]).mean()
        return logp[0], nll

    def run(extra: list, start: int) -> tuple[Tensor, Tensor | None]:
        """One pass from the residual stream kept at block ``start``, with the transition.

        The replay reuses the hooks of the full pass: it never reaches ``embed.hook_in``, so
        they keep that pass's prompt (its token ids, from which the placebo draws its targets).
        """
        with model.hooks(fwd_hooks=edits + extra), torch.inference_mode():
            return read(run_blocks(model, inputs[start], start, block_kwargs)[0])

    base_logp, base_nll = read(base_logits[0])
    kl = torch.zeros(len(bands), len(labels))
    dnll = torch.zeros(len(bands), len(labels)) if reference is not None else None
    cells = [(i, j) for i in range(len(bands)) for j in range(len(labels))]
    for i, j in tqdm(cells, desc="knockout", disable=not progress, leave=False):
        logp, nll = run(knockout_hooks(b[j], b[j + 1], range(*bands[i])), bands[i][0])
        kl[i, j] = (base_logp.exp() * (base_logp - logp)).sum()
        if dnll is not None:
            dnll[i, j] = nll - base_nll
    return KnockoutResult(bands, labels, kl, dnll, None if base_nll is None else float(base_nll))
