"""Flow reductions: pure tensor functions over attention patterns.

Everything here takes tensors and returns new tensors (float32 inside), never a model, a
hook or state. The probe (``at_probe.flow.probe``) calls these inside hooks, one head at a time,
so a forward pass never holds more than one extra ``T x T`` matrix.

Regions: token 0 (the attention sink) is region 0 on its own; tokens ``1 .. T-1`` are split
into ``R`` contiguous regions of near-equal size (``region_bounds``), or, when the prompt's
parts are known, the template head, ``R`` document regions and the instruction get regions of
their own (``prompt_regions``).

References: arXiv 2307.13365 (information transfer across layers); Abnar & Zuidema 2020,
"Quantifying Attention Flow in Transformers" (attention rollout).

Example:
    >>> bounds = region_bounds(T, 16)                  # [18]: sink, then 16 regions
    >>> mass = key_region_mass(pattern[0, 0], bounds)  # [T, 17]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from at_probe.runs.plotting import region_sort_key  # noqa: F401  (at_probe.ops.region_sort_key before the split)

Square = Float[Tensor, "query_pos key_pos"]


def region_bounds(seq_len: int, n_regions: int) -> Int[Tensor, " n_bounds"]:
    """Boundaries ``[0, 1, b_1, ..., T]`` of the sink region and ``n_regions`` context regions.

    Raises:
        ValueError: ``n_regions < 1`` or fewer than ``n_regions`` tokens after the sink.
    """
    if n_regions < 1:
        raise ValueError(f"n_regions must be >= 1, got {n_regions}")
    if seq_len - 1 < n_regions:
        raise ValueError(f"{seq_len} tokens cannot be split into a sink and {n_regions} regions")
    inner = torch.linspace(1, seq_len, n_regions + 1).round().long()
    return torch.cat((torch.tensor([0]), inner))


def region_labels(bounds: Tensor) -> list[str]:
    """Human-readable labels: ``"sink"`` then ``"1-52"`` style token ranges (inclusive)."""
    b = bounds.tolist()
    return ["sink"] + [f"{b[i]}-{b[i + 1] - 1}" for i in range(1, len(b) - 1)]


def prompt_regions(seq_len: int, n_regions: int, document: tuple[int, int]) -> tuple[Tensor, list[str]]:
    """Regions that follow a prompt's parts: bounds and labels.

    Token 0 is ``"sink"``; the rest of the template head (if any) is ``"template"``; the
    document ``[start, end)`` is split into ``n_regions`` near-equal regions ``"doc 01"`` ..;
    everything after the document (the instruction and the template tail) is
    ``"instruction"``. Empty parts are left out, so every region holds tokens.

    Raises:
        ValueError: the document span lies outside ``[0, seq_len]`` or has fewer tokens
            (past token 0) than ``n_regions``.
    """
    start, end = document
    first = max(start, 1)
    if n_regions < 1:
        raise ValueError(f"n_regions must be >= 1, got {n_regions}")
    if not 0 <= start <= end <= seq_len or end - first < n_regions:
        raise ValueError(f"document tokens [{start}, {end}) of a {seq_len}-token prompt cannot be split "
                         f"into {n_regions} regions")
    inner = torch.linspace(first, end, n_regions + 1).round().long().tolist()
    bounds, labels = [0], ["sink"]
    if first > 1:
        bounds.append(1)
        labels.append("template")
    bounds += inner[:-1]
    labels += [f"doc {i + 1:02d}" for i in range(n_regions)]
    bounds.append(end)
    if end < seq_len:
        bounds.append(seq_len)
        labels.append("instruction")
    return torch.tensor(bounds), labels


def _assignment(bounds: Tensor, n: int) -> Tensor:
    """One-hot ``[n, regions]`` matrix assigning each position to its region (float32)."""
    idx = torch.bucketize(torch.arange(n, device=bounds.device), bounds[1:], right=True)
    return torch.nn.functional.one_hot(idx, len(bounds) - 1).float()


def key_region_mass(pattern: Tensor, bounds: Tensor) -> Tensor:
    """Attention mass each query row puts on each key region: ``[..., q, k] -> [..., q, region]``.

    Row sums are kept as they are (the transition may leave rows summing to more than 1).
    """
    bounds = bounds.to(pattern.device)
    return pattern.float() @ _assignment(bounds, pattern.shape[-1])


def row_summary(pattern: Square, bounds: Tensor) -> tuple[Tensor, Tensor]:
    """One matrix product giving a pattern's key-region masses and mean key positions.

    Returns ``(key_mass [q, region], mean_key [q])`` where ``mean_key`` is the expected key
    index of each row renormalised to sum 1. ``sink_mass`` and ``attention_distance`` follow
    from these without another pass over the ``T x T`` pattern.
    """
    n = pattern.shape[-1]
    bounds = bounds.to(pattern.device)
    positions = torch.arange(n, device=pattern.device, dtype=torch.float32)[:, None]
    out = pattern.float() @ torch.cat((_assignment(bounds, n), positions), dim=1)
    key_mass = out[..., :-1]
    return key_mass, out[..., -1] / key_mass.sum(-1).clamp(min=1e-30)


def region_to_region(key_mass: Tensor, bounds: Tensor) -> Tensor:
    """Mean over the query rows of each region of their key-region mass.

    ``[..., q, region] -> [..., from_region, to_region]``.
    """
    bounds = bounds.to(key_mass.device)
    assign = _assignment(bounds, key_mass.shape[-2])
    counts = assign.sum(0).clamp(min=1)
    return (assign.T @ key_mass) / counts[:, None]


def sink_mass(pattern: Tensor) -> Tensor:
    """Mean attention on token 0 over rows ``1 .. T-1`` (row 0 can only attend to itself): ``[...]``."""
    return pattern[..., 1:, 0].float().mean(-1)


def row_entropy(pattern: Tensor, *, causal_block: int | None = None) -> Tensor:
    """Mean Shannon entropy (nats) of rows ``1 .. T-1``, each renormalised to sum 1: ``[...]``.

    Uses ``H = log S + sum(entr(p)) / S`` with ``S`` the row sum. Entries below zero (float
    rounding in the transition's arithmetic can leave ~-1e-9) count as 0. With ``causal_block=B`` the
    rows are taken in blocks of ``B`` and only keys up to each block's last row are read,
    skipping most of a causal pattern's zero upper triangle (same result, less work and a
    ``B x T`` temporary instead of ``T x T``).
    """
    t = pattern.shape[-2]
    block = causal_block or t
    total = pattern[..., 1:, :].float().clamp(min=0).sum(-1).clamp(min=1e-30)
    plogp = torch.cat([
        torch.special.entr(pattern[..., i0 : min(t, i0 + block), : min(t, i0 + block)].float().clamp(min=0)).sum(-1)
        for i0 in range(1, t, block)
    ], dim=-1)
    return (total.log() + plogp / total).mean(-1)


def attention_distance(pattern: Tensor) -> Tensor:
    """Mean over rows ``1 .. T-1`` of the expected query-key distance in tokens: ``[...]``.

    Each row is renormalised to sum 1, so a row the transition inflated counts once.
    """
    rows = pattern[..., 1:, :].float()
    q = torch.arange(1, pattern.shape[-2], device=pattern.device, dtype=torch.float32)
    k = torch.arange(pattern.shape[-1], device=pattern.device, dtype=torch.float32)
    total = rows.sum(-1).clamp(min=1e-30)
    return (q - (rows @ k) / total).mean(-1)


def output_gram(w_o: Tensor) -> Float[Tensor, "head d_head d_head"]:
    """``W_O^h (W_O^h)^T`` per head, from ``w_o`` ``[head, d_head, d_model]``: ``||v W_O^h||^2 =
    v^T G_h v``, so ``value_norms`` costs ``d_head^2`` per key and head instead of
    ``d_head * d_model`` (the probe computes it for every key of every layer)."""
    w = w_o.float()
    return w @ w.transpose(-1, -2)


def value_norms(values: Tensor, w_o: Tensor | None = None, *, gram: Tensor | None = None
                ) -> Float[Tensor, "head key_pos"]:
    """``||v_j W_O^h||`` for each query head ``h`` and key ``j`` (Kobayashi et al. 2020).

    ``values`` is one sequence's ``[T, kv_head, d_head]``; give ``w_o`` ``[head, d_head, d_model]``
    or its ``gram = output_gram(w_o)`` (computed once per layer by a caller that calls this per
    block of keys). Query head ``h`` reads key-value head ``h // (head / kv_head)`` (grouped-query
    attention).

    Raises:
        ValueError: neither or both of ``w_o`` and ``gram``.
    """
    if (w_o is None) == (gram is None):
        raise ValueError("value_norms takes w_o or gram, exactly one")
    gram = output_gram(w_o) if gram is None else gram
    n_heads, n_kv = gram.shape[0], values.shape[1]
    kv_of_head = torch.arange(n_heads, device=values.device) // (n_heads // n_kv)
    per_head = values.float()[:, kv_of_head, :]  # [T, head, d_head]
    projected = torch.einsum("thd,hde->the", per_head, gram.float().to(values.device))
    return (projected * per_head).sum(-1).clamp(min=0).sqrt().T


def with_residual(mean_pattern: Square) -> Square:
    """Rollout's augmented matrix: ``A + I`` (the residual stream) with rows renormalised to 1.

    A row of ``A`` summing to ``S`` becomes ``(A_row + e_q) / (S + 1)``: the residual stream
    gets weight ``1 / (S + 1)``, which is 1/2 only while ``S = 1``. Rows the paper transition
    inflated (``S`` up to ~4.7) therefore give attention more and the residual less weight.
    """
    a = mean_pattern.float()
    aug = a + torch.eye(a.shape[0], device=a.device)
    return aug / aug.sum(-1, keepdim=True)


def rollout_step(joint: Square | None, mean_pattern: Square) -> Square:
    """One layer of attention rollout: ``joint_l = aug(A_l) @ joint_{l-1}`` (identity before layer 0)."""
    aug = with_residual(mean_pattern)
    return aug if joint is None else aug @ joint


def rollout_rows(mean_patterns: Sequence[Square] | Tensor, row: int = -1) -> Float[Tensor, "layer key_pos"]:
    """Row ``row`` of the rollout after each layer: ``out[l] = e_row^T aug(A_l) ... aug(A_0)``.

    ``mean_patterns``: the head-averaged ``[T, T]`` pattern of each layer (a list, or ``[L, T, T]``).

    The same numbers as chained ``rollout_step`` calls, without ``O(T^3)`` matrix products:
    going down the layers, every rollout that includes layer ``l`` is advanced with one
    ``[k, T] @ [T, T]`` product, so each layer's map is read once.
    """
    n_layers, t = len(mean_patterns), mean_patterns[0].shape[-1]
    out = torch.zeros(n_layers, t, dtype=torch.float32, device=mean_patterns[0].device)
    out[:, row] = 1.0
    for l in range(n_layers - 1, -1, -1):
        a = mean_patterns[l].float()
        # v @ aug(A) = w @ A + w with w = v / (rowsum(A) + 1): no T x T temporary.
        w = out[l:] / (a.sum(-1) + 1.0)
        out[l:] = w @ a + w
    return out


def knockout(pattern: Tensor, start: int, end: int) -> Tensor:
    """Block attention to keys ``[start, end)`` from the rows after them, rows renormalised.

    Rows ``>= end`` lose their mass on the region and are rescaled to their original sum;
    rows inside or before the region are untouched (the region still reads its own past).
    Works on ``[..., q, k]``; returns a new tensor (``knockout_`` edits in place).
    """
    return knockout_(pattern.clone(), start, end)


def knockout_(pattern: Tensor, start: int, end: int, *, first_row: int = 0) -> Tensor:
    """In-place ``knockout`` touching only rows ``>= end``; returns ``pattern``.

    ``pattern`` may hold a block of query rows whose first is row ``first_row`` (chunked
    attention, ``at_probe.models.chunked``); each row is edited as in the whole pattern."""
    rows = pattern[..., max(0, end - first_row):, :]
    before = rows.sum(-1, keepdim=True)
    rows[..., start:end] = 0
    after = rows.sum(-1, keepdim=True)
    rows *= torch.where(after > 0, before / after.clamp(min=1e-30), torch.ones_like(after))
    return pattern
