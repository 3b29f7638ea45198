"""Ms-PoE-style multi-scale positions (Zhang et al., NeurIPS 2024, "Found in the Middle: How
Language Models Use Long Contexts Better via Plug-and-Play Positional Encoding").

On each chosen layer, every head's rotary positions are compressed by its own ratio: a token at
position ``p`` is rotated as if it stood at ``p / r_h``, in the queries and the keys alike, so
attention still depends on relative position only, at a scale that differs between heads. The
ratios run from ``low`` to ``high`` (1.2 and 1.8) as in the authors' code
(``VITA-Group/Ms-PoE``, ``utils/modify_arch/llama.py``: ``low + (high - low) i / n`` for
``i = 0 .. n-1``), and the heads that attend to few keys strongly get the smallest: at the
prompt's prefill, each head's *outlier* share is the fraction of keys whose weight in the last
prompt row's position-free attention (queries and keys before the rotation) exceeds three times
the row's mean, and the head with the largest share gets ``low``. Layers ``2 .. L-1`` by default,
as in the authors' scripts.

How it is applied: the bridge rotates queries and keys before ``hook_rot_q`` / ``hook_rot_k``;
those hooks rotate them further by ``p (1 / r - 1)`` per frequency, which composes to the
rotation of ``p / r``. Positions are read off the layer's own ``cos`` / ``sin`` (``hook_cos`` /
``hook_sin``: the angle of the lowest frequency; once per pass when its layers share them), so
any position convention of the caller (left padding, a KV cache) is kept. The keys go into the
KV cache compressed, and the ratios found at prefill serve the prompt's decode steps and
cache-less continuations.

Where we differ from the authors' code, deliberately: it gives head ``j`` the ratio of the
``j``-th ranked head's index (``cos[head_order]``), not the ``j``-th ratio of the ranking, which
scrambles the paper's rule; here the rule is the paper's. It ranks from batch row 0 only and
ignores padding; here each sequence ranks its own heads on its own keys. Under grouped-query
attention its keys take the ratio of one query head of their group while the other query heads
use theirs, which breaks the relative-position property; here each key-value head and its query
heads share one ratio, ranked by the group's mean outlier share (with one query head per
key-value head this is the authors' scheme).

The ranking needs the prompt's last query and every key before any row is rotated. A whole
pass has them at ``hook_q`` / ``hook_k``, which rank for free. Under chunked attention those fire
once per block, and the first block is rotated before the last row exists inside the attention,
so there the ranking computes them at the layer's input (``ln1.hook_out``, which sees the whole
pass) with the layer's own query and key projections: the product ``hook_q`` / ``hook_k`` see,
bit for bit, so every block gets the ratios an unchunked pass gives, at the cost of one more
query and key projection per edited layer at a prompt's first pass (an edit that a hook
registered before these makes at ``hook_q`` / ``hook_k`` is seen by a whole pass's ranking, not
by a chunked one's). The pass's left padding is read at layer 0's scores, so layer 0 is never
edited (the authors' scripts leave layers 0 and 1 alone).
The placebo (``placebo_seed``) gives the same ratios to the heads in a random order, drawn per
layer and document: it keeps the compression and drops the ranking.

Example:
    >>> from at_probe.interventions.multiscale_positions import MultiScalePositions
    >>> with MultiScalePositions().applied(model), torch.inference_mode():
    ...     logits = model(tokens)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from at_probe.interventions.base import HookLifetime, HookPair, int_tuple
from at_probe.interventions.registry import (
    PLACEBO_SEED,
    Key,
    Method,
    Placebo,
    layer_range,
    register,
    show_layer_range,
)
from at_probe.interventions.tracking import PromptTracker, check_lengths_fit, lengths_of
from at_probe.models.chunked import chunking, query_block
from at_probe.models.hooked import pass_padding
from at_probe.models.loading import ModelShape
from at_probe.models.names import EMBED_INPUT_HOOK, resolve_layers, scores_hook
from at_probe.runs.seeding import draw_generator, prompt_digest

if TYPE_CHECKING:
    from at_probe.models.prompts import Prompt
_UNRANKED = ("MultiScalePositions: a pass without its prompt's prefill under the same hooks (register every pair "
             "that .hooks(model) returns, before the prompt's first pass)")


def compression_ratios(n: int, low: float, high: float) -> Tensor:
    """The authors' ``n`` ratios ``low + (high - low) i / n``, ``i = 0 .. n-1`` (``high`` itself
    is never reached): ``[n]`` float32."""
    return low + (high - low) * torch.arange(n, dtype=torch.float32) / n


def outlier_shares(query: Tensor, keys: Tensor) -> Tensor:
    """Per query head, the share of keys whose weight in the position-free attention of one row
    exceeds three times the row's mean weight.

    Args:
        query: the row's query ``[head, d_head]`` before the rotation.
        keys: the keys it sees ``[head, keys, d_head]`` before the rotation (repeated per query
            head under GQA).

    Returns:
        ``[head]`` shares in ``[0, 1]``.
    """
    weights = torch.softmax((keys.float() @ query.float()[:, :, None])[..., 0] / math.sqrt(query.shape[-1]), -1)
    return (weights > 3 * weights.mean(-1, keepdim=True)).float().mean(-1)


def group_ratios(shares: Tensor, groups: int, low: float, high: float, order: Tensor | None = None) -> Tensor:
    """Each key-value head's ratio ``[kv_head]``: its query heads' mean outlier share ranks it, and
    the ``j``-th ranked (largest share first) gets the ``j``-th of ``compression_ratios``; ``order``
    (a permutation of the key-value heads) replaces the ranking (the placebo)."""
    n = shares.numel() // groups
    ranked = torch.argsort(-shares.view(n, groups).mean(-1), stable=True) if order is None else order
    ratios = torch.empty(n)
    ratios[ranked] = compression_ratios(n, low, high)
    return ratios


def rope_positions(cos: Tensor, sin: Tensor, inv_freq: Tensor) -> Tensor:
    """The positions ``[batch, T]`` a rotary ``cos`` / ``sin`` ``[batch, T, d_head]`` encode, read
    off the lowest frequency's angle (one turn there spans ``2 pi / min(inv_freq)`` positions:
    47k at base 10,000 and 64 dimensions), rounded to whole positions."""
    j = int(torch.argmin(inv_freq))
    angle = torch.atan2(sin[..., j].float(), cos[..., j].float()) % (2 * math.pi)
    return torch.round(angle / inv_freq[j].float())


def turn_tables(angle: Tensor) -> tuple[Tensor, Tensor]:
    """``cos`` and ``sin`` ``[..., d_head]`` of ``angle`` ``[..., d_head / 2]`` per frequency, in
    Llama's rotate-half layout (each frequency in both halves), for ``rotate_``."""
    cos, sin = angle.cos(), angle.sin()
    return torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)


def rotate_(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` ``[..., d_head]`` by the angles whose ``cos`` / ``sin`` (``turn_tables``,
    broadcastable to ``x``) are given, in place (Llama's rotate-half layout); returns ``x``."""
    half = x.shape[-1] // 2
    turned = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    x.copy_((x.to(cos.dtype) * cos + turned.to(cos.dtype) * sin).to(x.dtype))
    return x


@dataclass
class PositionScalesReport:
    """The ratio of every key-value head, per layer, of each sequence of the current prompt
    (``ratios[layer]``: ``[batch, kv_head]``)."""

    ratios: dict[int, Tensor] = field(default_factory=dict)

    def __str__(self) -> str:
        if not self.ratios:
            return "nothing edited"
        return "\n".join(f"layer {l:3d}: " + "; ".join(" ".join(f"{r:.3f}" for r in row) for row in t.tolist())
                         for l, t in sorted(self.ratios.items()))


class _Run(PromptTracker):
    """One set of hooks: the pass's padding and rotary positions, and the prompt's ratios."""

    def __init__(self, model: Any, lengths: list[int] | None):
        super().__init__(model)
        self.fixed_lengths = lengths
        self.new_prompt()

    def new_prompt(self) -> None:
        self.lengths = self.fixed_lengths
        self.ratios: dict[int, Tensor] = {}
        self.offsets: list[int] = []
        # the last hook_cos / hook_sin as given (not detached: rotary tables never need grad)
        self.cos: Tensor | None = None
        self.sin: Tensor | None = None
        self.positions: Tensor | None = None  # [batch, T] read off cos / sin while they stay the same
        self.turn: tuple[int, Tensor, Tensor] | None = None  # a layer's extra turn, until its keys take it
        self.cached = False  # whether the current pass runs on a KV cache
        self.queries: Tensor | None = None  # a whole pass's hook_q, until its hook_k ranks

    def report(self) -> PositionScalesReport:
        return PositionScalesReport(dict(self.ratios))


@dataclass(frozen=True)
class MultiScalePositions(HookLifetime):
    """Ms-PoE's per-head compression of rotary positions (module docstring).

    Args:
        low, high: the ratios' range, ``1 <= low <= high`` (default 1.2 and 1.8, the authors').
        layers: layers to edit, each ``>= 1``; ``None`` (default): ``2 .. L-1``, the authors'.
        placebo_seed: if set, the ratios go to the key-value heads in a random order, drawn per
            layer and document, instead of by outlier share (the control for the ranking).

    Raises:
        ValueError: bad ``low`` / ``high`` / ``layers`` (at construction), layer 0 or layers outside
            the model, or a model whose rotary embedding is not Llama's (at ``hooks``), or
            ``prompt_lengths`` that do not fit the pass (at its first pass).
    """

    low: float = 1.2
    high: float = 1.8
    layers: tuple[int, ...] | None = None
    placebo_seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("low", "high"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if not 1.0 <= self.low <= self.high:
            raise ValueError(f"the ratios must satisfy 1 <= low <= high (a ratio below 1 stretches positions past "
                             f"the trained range), got low={self.low:g}, high={self.high:g}")
        if self.layers is not None:
            object.__setattr__(self, "layers", int_tuple("layers", self.layers))
        if self.placebo_seed is not None:
            object.__setattr__(self, "placebo_seed", int_tuple("placebo_seed", [self.placebo_seed])[0])

    def hooks(self, model: Any, *, prompt_lengths: Sequence[int] | int | None = None,
              prompts: Sequence[Prompt] | None = None) -> list[HookPair]:
        """``(hook_name, fn)`` pairs: layer 0's scores (the pass's padding) and, per edited layer,
        ``hook_q`` / ``hook_k`` (the ranking, at a prompt's first pass; ``ln1.hook_out`` under
        chunked attention), ``hook_cos`` / ``hook_sin`` (positions), ``hook_rot_q`` and
        ``hook_rot_k`` (the edit). ``prompt_lengths`` / ``prompts``: as ``AttentionEdit.hooks``."""
        n_layers = int(model.cfg.n_layers)
        layers = range(2, n_layers) if self.layers is None else resolve_layers(self.layers, range(n_layers))
        if 0 in layers:
            raise ValueError("MultiScalePositions reads each pass's padding at layer 0: it edits layers 1 .. L-1")
        # a ModelShape (settings checked before a run loads the weights) has no rotary embedding
        inv_freq = torch.ones(1) if isinstance(model, ModelShape) else _inv_freq(model)
        groups = int(model.cfg.n_heads) // int(getattr(model.cfg, "n_key_value_heads", None) or model.cfg.n_heads)
        run = _Run(model, lengths_of(prompt_lengths, prompts))
        object.__setattr__(self, "_last_run", run)

        def read_padding(scores: Tensor, *, hook: Any) -> None:
            run.see_attention(scores)
            run.offsets = pass_padding(scores)
            run.cached = query_block(scores).past > 0

        # Positions are read again only when cos / sin are new objects: a whole pass's layers share
        # one (a decode step reads them once, not twice per layer); chunked blocks get new slices.
        def keep_cos(cos: Tensor, *, hook: Any) -> None:
            if cos is not run.cos:
                run.cos, run.positions, run.turn = cos, None, None

        def keep_sin(sin: Tensor, *, hook: Any) -> None:
            if sin is not run.sin:
                run.sin, run.positions, run.turn = sin, None, None

        def turn(layer: int, device: torch.device) -> tuple[Tensor, Tensor]:
            """The layer's extra turn ``p (1 / r - 1)`` per key-value head, as float64 tables
            ``[batch, T, kv_head, d_head]`` (float64: the turn adds no rounding of its own),
            computed once for its queries and keys."""
            if run.turn is None or run.turn[0] != layer:
                freq = inv_freq.to(device)
                if run.positions is None:
                    assert run.cos is not None and run.sin is not None
                    run.positions = rope_positions(run.cos.detach(), run.sin.detach(), freq).double()
                scale = 1.0 / run.ratios[layer].to(device).double() - 1.0  # [batch, kv_head]
                angle = run.positions[:, :, None, None] * freq.double() * scale[:, None, :, None]
                run.turn = (layer, *turn_tables(angle))
            return run.turn[1], run.turn[2]

        def unranked(layer: int, chunked: bool) -> bool:
            """Whether this hook ranks ``layer``: a prompt's first pass, chunked or whole as asked."""
            if layer in run.ratios or (chunking(model) is not None) != chunked:
                return False  # a later pass of the prompt keeps its first pass's ratios
            if run.cached:  # a decode step whose prompt was not ranked: its keys are in the cache
                raise RuntimeError(_UNRANKED)
            return True

        def rank_input(layer: int) -> Any:
            def fn(hidden: Tensor, *, hook: Any) -> None:
                if unranked(layer, chunked=True):
                    run.ratios[layer] = self._ratios(run, layer, groups, *_queries_keys(model, layer, hidden))
            return fn

        def keep_queries(layer: int) -> Any:
            def fn(queries: Tensor, *, hook: Any) -> None:
                if unranked(layer, chunked=False):
                    run.queries = queries.detach()
            return fn

        def rank_keys(layer: int) -> Any:
            def fn(keys: Tensor, *, hook: Any) -> None:
                if unranked(layer, chunked=False):
                    if run.queries is None:
                        raise RuntimeError(_UNRANKED)
                    queries, run.queries = run.queries, None
                    run.ratios[layer] = self._ratios(run, layer, groups, queries, keys.detach())
            return fn

        def edit(kind: str, layer: int) -> Any:
            def fn(tensor: Tensor, *, hook: Any) -> Tensor:
                if layer not in run.ratios:
                    raise RuntimeError(_UNRANKED)
                cos, sin = turn(layer, tensor.device)
                if kind == "k":  # the bridge rotates queries first: the keys are the turn's last use
                    run.turn = None  # (not kept past the layer: float64 [batch, T, kv_head, d_head] x 2)
                    return rotate_(tensor.clone(), cos, sin)
                # query heads [batch, T, kv_head * groups, d_head]: each group takes its key-value head's turn
                b, t, heads, d = tensor.shape
                grouped = tensor.reshape(b, t, heads // groups, groups, d).clone()
                return rotate_(grouped, cos[:, :, :, None], sin[:, :, :, None]).view(b, t, heads, d)
            return fn

        pairs: list[HookPair] = [(EMBED_INPUT_HOOK, run.see_tokens), (scores_hook(0), read_padding)]
        for layer in layers:
            attn = f"blocks.{layer}.attn."
            pairs += [(f"blocks.{layer}.ln1.hook_out", rank_input(layer)),
                      (attn + "hook_q", keep_queries(layer)), (attn + "hook_k", rank_keys(layer)),
                      (attn + "hook_cos", keep_cos), (attn + "hook_sin", keep_sin),
                      (attn + "hook_rot_q", edit("q", layer)), (attn + "hook_rot_k", edit("k", layer))]
        return pairs

    def _ratios(self, run: _Run, layer: int, groups: int, queries: Tensor, keys: Tensor) -> Tensor:
        """At a prompt's first pass: each sequence's key-value head ratios ``[batch, kv_head]``,
        from the pass's queries ``[batch, T, head, d_head]`` and keys ``[batch, T, kv_head,
        d_head]`` before the rotation."""
        if not run.offsets:
            raise RuntimeError(_UNRANKED)
        total = queries.shape[1]
        if run.lengths is None:
            run.lengths = [total - o for o in run.offsets]
        check_lengths_fit(run.lengths, run.offsets, total)
        out = []
        for b, (offset, length) in enumerate(zip(run.offsets, run.lengths)):
            last = offset + length - 1
            seen = keys[b, offset : last + 1].transpose(0, 1).repeat_interleave(groups, dim=0)
            shares = outlier_shares(queries[b, last], seen)
            order = None
            if self.placebo_seed is not None:
                ids = [] if run.prompt is None else run.prompt[b, offset : last + 1].tolist()
                gen = draw_generator(self.placebo_seed, "multiscale-heads", layer, prompt_digest(ids))
                order = torch.randperm(shares.numel() // groups, generator=gen)
            out.append(group_ratios(shares, groups, self.low, self.high, order))
        return torch.stack(out)


def _queries_keys(model: Any, layer: int, hidden: Tensor) -> tuple[Tensor, Tensor]:
    """A layer's queries ``[batch, T, head, d_head]`` and keys ``[batch, T, kv_head, d_head]``
    before the rotation, from its attention input ``hidden`` ``[batch, T, d_model]``: the
    projections' own weights (not their bridge modules, whose hooks would fire), the product
    ``hook_q`` / ``hook_k`` see in a whole pass (chunked attention's ranking)."""
    attn = model.blocks[layer].attn.original_component
    d_head = int(model.cfg.d_head)
    out = []
    for proj in (attn.q_proj, attn.k_proj):
        linear = getattr(proj, "original_component", proj)
        x = torch.nn.functional.linear(hidden, linear.weight, linear.bias)
        out.append(x.view(*hidden.shape[:2], -1, d_head))
    return out[0], out[1]


def _inv_freq(model: Any) -> Tensor:
    """The rotary frequencies ``[d_head / 2]`` of a Llama-family bridge."""
    rotary = getattr(getattr(model, "rotary_emb", None), "original_component", None)
    inv_freq = getattr(rotary, "inv_freq", None)
    if not isinstance(inv_freq, Tensor):
        raise ValueError("MultiScalePositions needs a model with Llama's rotary embedding (model.rotary_emb.inv_freq)")
    return inv_freq.detach().float()


# ``multiscale_positions:low=1.2,high=1.8`` (layers 2 .. L-1) and its placebo
_MULTISCALE_KEYS = {"low": Key(float), "high": Key(float), "layers": Key(layer_range, show=show_layer_range)}
register(Method("multiscale_positions", MultiScalePositions, _MULTISCALE_KEYS,
                summary="Ms-PoE: each head's rotary positions compressed by its ratio (MultiScalePositions)",
                placebo=Placebo("multiscale_positions_placebo")))
register(Method("multiscale_positions_placebo", MultiScalePositions,
                {**_MULTISCALE_KEYS, "seed": Key(int, field="placebo_seed", default=PLACEBO_SEED)},
                summary="the same ratios in a random order of heads"))
